"""The report's charts, drawn with matplotlib's object API (no pyplot state) and returned as PNG bytes.

Agg is chosen per figure (FigureCanvasAgg), so importing this module changes no global backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from server.report.run_data import as_dict, number

DPI = 110
SKIPPED_COLOUR = "#d62728"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
    return out.getvalue()


def _round_axis(ax: Any, rounds: Sequence[int]) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rounds:
        ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    ax.grid(True, alpha=0.3)


def _mark_skipped(ax: Any, skipped: Sequence[int], label: bool) -> None:
    for i, r in enumerate(skipped):
        ax.axvspan(r - 0.5, r + 0.5, color=SKIPPED_COLOUR, alpha=0.12, lw=0,
                   label="round not aggregated" if label and i == 0 else None)


def model_plot(rounds: Sequence[dict[str, Any]]) -> bytes:
    """Pooled validation AUROC (± std across sites) and loss per round; rounds that did not aggregate shaded.

    `rounds`: summary.json "rounds" entries. Returns a PNG (two panels side by side).
    """
    numbers = [int(r["round"]) for r in rounds if isinstance(r.get("round"), int)]
    skipped = [int(r["round"]) for r in rounds if isinstance(r.get("round"), int)
               and (r.get("skipped") or r.get("aggregated") is False)]
    fig = Figure(figsize=(10, 3.6))
    auroc_ax, loss_ax = fig.subplots(1, 2)
    for ax, key, title in ((auroc_ax, "auroc", "Pooled validation AUROC"), (loss_ax, "loss", "Pooled validation loss")):
        points = [(int(r["round"]), number(r.get(key)), number(r.get(f"{key}_std"))) for r in rounds
                  if isinstance(r.get("round"), int) and number(r.get(key)) is not None]
        if points:
            xs, ys, std = zip(*points)
            ax.plot(xs, ys, marker="o", color="#1f77b4", label=key.upper() if key == "auroc" else key)
            if key == "auroc" and any(s is not None for s in std):
                ax.errorbar(xs, ys, yerr=[s or 0.0 for s in std], fmt="none", ecolor="#1f77b4", alpha=0.5,
                            capsize=3, label="± std from the sites' DP noise")
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no evaluated round", transform=ax.transAxes, ha="center", va="center")
        _mark_skipped(ax, skipped, label=True)
        ax.margins(y=0.18)
        _round_axis(ax, numbers)
        ax.set_title(title)
        ax.set_ylabel("AUROC" if key == "auroc" else "loss (binary cross-entropy)")
        if key == "auroc":
            ax.set_ylim(min([0.4] + [p[1] - (p[2] or 0) - 0.05 for p in points]), 1.02)
            ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance (0.5)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if key == "auroc" else "upper right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def epsilon_plot(rounds: Sequence[dict[str, Any]], sites: dict[str, dict[str, Any]], names: Sequence[str]) -> bytes:
    """Run ε each site reported after each round, with a dashed line at each site's epsilon_cap.

    `rounds`: summary.json "rounds" (their "epsilon": site -> run ε); `sites`: summary.json "sites"
    (their "epsilon_cap", the cap as the site reported it; none drawn where it is null or missing).
    Returns a PNG.
    """
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    rounds = [r for r in rounds if isinstance(r.get("round"), int)]
    numbers = [int(r["round"]) for r in rounds]
    colours = [f"C{i % 10}" for i in range(len(names))]
    drawn = False
    for name, colour in zip(names, colours):
        series = [(int(r["round"]), number(as_dict(r.get("epsilon")).get(name))) for r in rounds
                  if isinstance(r.get("round"), int)]
        points = [(x, y) for x, y in series if y is not None]
        if points:  # a round the site reported nothing in breaks its line (NaN) rather than bridging it
            ax.plot([x for x, _ in series], [math.nan if y is None else y for _, y in series], marker="o",
                    color=colour, label=f"{name} (run ε)")
            ax.annotate(f"{points[-1][1]:.2f}", points[-1], textcoords="offset points", xytext=(6, 0),
                        va="center", fontsize=8, color=colour)
            drawn = True
        cap = number(as_dict(sites.get(name)).get("epsilon_cap"))
        if cap is not None:
            ax.axhline(cap, color=colour, ls="--", lw=1.2, label=f"{name} cap ε = {cap:g}")
            drawn = True
        elif points:
            ax.plot([], [], ls="none", label=f"{name} cap: not reported")
    fallback = [(x, number(r.get("max_epsilon"))) for x, r in zip(numbers, rounds)]
    fallback = [(x, y) for x, y in fallback if y is not None]
    if not drawn and fallback:  # an older summary: only the largest ε of each round
        ax.plot(*zip(*fallback), marker="o", color="grey", label="max ε over sites (no per-site ε recorded)")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no ε reported", transform=ax.transAxes, ha="center", va="center")
    _round_axis(ax, numbers)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("ε (run, as each site reported it)")
    ax.set_title("Privacy spent per site per round, against each site's cap")
    if drawn:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    return _png(fig)
