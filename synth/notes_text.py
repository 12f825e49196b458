"""Site-specific clinical note wording and note composition."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CONCERNING = 5
"""Every note mentions exactly this many phrases (concerning + reassuring)."""

FILLERS: tuple[str, ...] = (
    "Patient seen on ward round.",
    "Plan discussed with team.",
    "Family updated by phone.",
    "Observations chart reviewed.",
    "Medications reconciled.",
    "Will review again tomorrow.",
    "Nursing staff aware of plan.",
    "Bloods sent this morning.",
)


@dataclass(frozen=True)
class Wording:
    """The phrases one site uses in its notes (5 concerning, 5 reassuring)."""

    concerning: tuple[str, ...]
    reassuring: tuple[str, ...]


WORDING_A = Wording(
    concerning=("dyspnea", "febrile", "tachycardic", "hypotensive", "confused"),
    reassuring=(
        "no acute distress",
        "afebrile",
        "ambulating independently",
        "tolerating diet",
        "alert and oriented",
    ),
)
WORDING_B = Wording(
    concerning=(
        "short of breath",
        "fever",
        "heart racing",
        "low blood pressure",
        "disoriented",
    ),
    reassuring=(
        "comfortable at rest",
        "temperature normal",
        "walking unaided",
        "eating and drinking well",
        "fully orientated",
    ),
)
WORDING_C = Wording(
    concerning=("SOB", "pyrexial", "HR elevated", "BP low", "altered mental status"),
    reassuring=(
        "NAD",
        "apyrexial",
        "mobilising independently",
        "tolerating oral intake",
        "GCS 15",
    ),
)


def concerning_count(f_note: float) -> int:
    """Number of concerning phrases for latent factor `f_note`: clip(round(2.5 + 1.5 f), 0, 5)."""
    return int(np.clip(np.rint(2.5 + 1.5 * f_note), 0, MAX_CONCERNING))


def _sentence(phrase: str) -> str:
    """Turn a phrase into a sentence, keeping acronyms (e.g. 'SOB') as they are."""
    return phrase[0].upper() + phrase[1:] + "."


def compose_note(rng: np.random.Generator, wording: Wording, n_concerning: int) -> str:
    """Compose a note with `n_concerning` concerning and 5 - n reassuring phrases plus 1-3 fillers."""
    if not 0 <= n_concerning <= MAX_CONCERNING:
        raise ValueError(f"n_concerning must be in 0..{MAX_CONCERNING}, got {n_concerning}")
    bad = rng.choice(len(wording.concerning), size=n_concerning, replace=False)
    good = rng.choice(len(wording.reassuring), size=MAX_CONCERNING - n_concerning, replace=False)
    phrases = [wording.concerning[i] for i in bad] + [wording.reassuring[i] for i in good]
    sentences = [_sentence(p) for p in phrases]
    n_fill = int(rng.integers(1, 4))
    fillers = [FILLERS[i] for i in rng.choice(len(FILLERS), size=n_fill, replace=False)]
    sentences = sentences + fillers
    order = rng.permutation(len(sentences))
    return " ".join(sentences[i] for i in order)
