"""What a load report may repeat from a site's tables: values of an expected shape, nothing else.

The readiness report and the console summary are meant for the central team. A cell of a site's
export (a lab code, a unit) can hold anything, a patient identifier or free text included, so a
value is only repeated when it has the shape the field expects: a LOINC code (digits, a dash and
a valid mod-10 check digit) or a unit from the catalogue. Anything else is counted under a
generic reason.
"""

from __future__ import annotations

import re
from collections.abc import Collection

_LOINC = re.compile(r"(\d{1,7})-(\d)")
OTHER_CODE = "a code that is not LOINC-shaped"
OTHER_UNIT = "a unit that is not in the catalogue"
AMBIGUOUS_UNIT = "a spelling of several catalogue units"


def loinc_check_digit(number: str) -> int:
    """The LOINC mod-10 check digit of the digits before the dash (Regenstrief, LOINC Users' Guide,
    "Calculating Mod 10 check digits"): Luhn over the number with the check digit appended."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10


def is_loinc(code: str) -> bool:
    """True for a LOINC-shaped code whose check digit is right, e.g. '2345-7'."""
    match = _LOINC.fullmatch(code)
    return bool(match) and loinc_check_digit(match.group(1)) == int(match.group(2))


def shareable_code(code: str) -> str:
    """The code itself if it is LOINC-shaped, else a generic label."""
    return code if is_loinc(code) else OTHER_CODE


def shareable_unit(unit: str, catalogue: Collection[str]) -> str:
    """The unit itself when the catalogue has it, the catalogue's spelling when exactly one
    catalogue unit matches it ignoring case, else a generic label."""
    if unit in catalogue:
        return unit
    folded = [u for u in catalogue if u.lower() == unit.lower()]
    return folded[0] if len(folded) == 1 else AMBIGUOUS_UNIT if folded else OTHER_UNIT
