"""Why a site declined a round: codes the site sends and the coordinator reports.

They travel in a Flower error reply (code + fixed text); they say nothing about patients.
"""

from __future__ import annotations

LIFETIME_BUDGET = 701
RUN_BUDGET = 702
LEDGER_UNREADABLE = 703
EVAL_TOO_SMALL = 704
EVAL_LIMIT = 705
ACCOUNTING_LIMIT = 706

REASONS = {
    LIFETIME_BUDGET: "declined: the round would exceed the site's lifetime privacy budget",
    RUN_BUDGET: "declined: the round would exceed the site's per-run privacy ceiling",
    LEDGER_UNREADABLE: "declined: the site's privacy ledger is unreadable; it will not train until fixed",
    EVAL_TOO_SMALL: "declined: too few held-out patients to report validation metrics",
    EVAL_LIMIT: "declined: the site's limit of evaluation requests per run is reached",
    ACCOUNTING_LIMIT: "declined: the site's ledger holds as many distinct noise settings as its policy allows; "
                      "a privacy officer must review",
}


class RoundDeclined(Exception):
    """The site will not train this round; `code` is one of REASONS."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
