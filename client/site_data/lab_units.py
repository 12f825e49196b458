"""Unit spellings of a lab export matched onto the units the catalogue configures.

Laboratory systems print one unit many ways: `umol/L`, `µmol/L` (U+00B5 MICRO SIGN), `μmol/L`
(U+03BC GREEK SMALL LETTER MU), `mcmol/L`, `micromol/L`, `µmol / L`, fullwidth `ｕｍｏｌ／Ｌ`;
`10*9/L` (UCUM), `10^9/L`, `x10E9/L`, `×10⁹/L`, `G/L` for cell counts. The catalogue
(configs/data, and site.yaml `lab_units`) configures units as UCUM-style codes, and UCUM is
case-sensitive (`mU/L` is milli-units, `MU/L` mega-units), so spellings are not simply
lower-cased. A reported unit matches a configured unit of the same feature at the first of
these levels that finds any:

1. the two strings are identical;
2. their spelling keys (`unit_key`) are identical;
3. their case-folded keys are identical.

A match must be unambiguous: two configured units at the same level means no match. No factor
is ever derived from a spelling: a matched unit converts with its configured factor, so every
spelling of a unit converts identically, and a unit nobody configured is never converted.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection

from client.site_data.readiness.shapes import AMBIGUOUS_UNIT, OTHER_UNIT

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_SUPERSCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_MICRO_WORD = re.compile("micro", re.IGNORECASE)
# 'mc' is the US pharmacy spelling of micro (mcg, mcmol); only before a base unit, never 'mcL'-like words
_MC_PREFIX = re.compile(r"(?<![A-Za-z])mc(?=(?:g|mol|l|L|eq|Eq|U|IU)(?![A-Za-z]))")
# a power of ten written 10*9 (UCUM), 10^9, 10**9, 10E9, 10e9, x10^9, ×10^9 (after superscripts)
_POWER_OF_TEN = re.compile(r"(?<![0-9])[xX×*]?10(?:\*\*|\*|\^|[eE])\+?([0-9]+)")
# UCUM has both 'l' and 'L' for the litre: one spelling, with any SI prefix before it
_LITRE = re.compile(r"(?<![A-Za-z])([dcmunpf]?)[lL](?![A-Za-z])")
# a bare SI prefix as the numerator counts cells: G/L = 10*9/L (French/German reports), K/uL = 10*3/uL (US)
_COUNT_PREFIX = {"K": "10*3", "k": "10*3", "G": "10*9", "T": "10*12"}
_COUNT = re.compile(r"^([A-Za-z])(?=/)")


@functools.lru_cache(maxsize=4096)
def _spelling(unit: str) -> str:
    text = _SUPERSCRIPT_RUN.sub(lambda m: "^" + m.group(0).translate(_SUPERSCRIPTS), unit)
    text = unicodedata.normalize("NFKC", text).replace("\u03bc", "u")  # NFKC maps U+00B5 to U+03BC
    text = "".join(text.split())
    text = _MC_PREFIX.sub("u", _MICRO_WORD.sub("u", text))
    text = _POWER_OF_TEN.sub(r"10*\1", text)
    return _LITRE.sub(r"\1L", text)


@functools.lru_cache(maxsize=4096)
def unit_key(unit: str) -> str:
    """The spelling key of `unit`: NFKC, µ/μ/'micro'/'mc' as the prefix `u`, no whitespace,
    powers of ten as `10*N`, `l` as `L`, a bare K/G/T numerator as `10*3`/`10*9`/`10*12`.
    Case is kept: 'mU/L' and 'MU/L' have different keys. E.g. 'µmol / l' -> 'umol/L'."""
    text = _spelling(unit)
    return _COUNT.sub(lambda m: _COUNT_PREFIX.get(m.group(1), m.group(1)), text)


@functools.lru_cache(maxsize=4096)
def folded_key(unit: str) -> str:
    """`unit_key` with case ignored, except that a bare 'G' or 'T' numerator stays a letter
    (case-folded 'G/L' is grams per litre, as an all-capitals system prints 'g/L')."""
    text = _spelling(unit).casefold()
    return re.sub(r"^k(?=/)", "10*3", text)


def _candidates(reported: str, units: Collection[str]) -> list[str]:
    if reported in units:
        return [reported]
    for key in (unit_key, folded_key):
        found = [u for u in units if key(u) == key(reported)]
        if found:
            return found
    return []


def configured_unit(reported: str, units: Collection[str]) -> str | None:
    """The one configured unit (an element of `units`) that `reported` spells, else None
    (no configured unit, or several: e.g. 'mu/l' when both 'mU/L' and 'MU/L' are configured)."""
    found = _candidates(reported, units)
    return found[0] if len(found) == 1 else None


def shareable_unit_name(reported: str, units: Collection[str]) -> str:
    """What a report may say about `reported`: the configured unit it spells (never the cell
    itself), or a generic label from client/site_data/readiness/shapes.py."""
    found = _candidates(reported, units)
    return found[0] if len(found) == 1 else AMBIGUOUS_UNIT if found else OTHER_UNIT
