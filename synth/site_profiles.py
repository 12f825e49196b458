"""Per-site (non-IID) profiles: prevalence, missingness, scanner, rescale, lab units, wording."""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

import numpy as np

from synth.notes_text import WORDING_A, WORDING_B, WORDING_C, Wording

MAX_SITES = 26
_PROFILE_STREAM = 7  # RNG stream id for the perturbation of profiles of sites k >= 3


@dataclass(frozen=True)
class LabSpec:
    """One lab test in canonical units: value = mean + sd * (loading * f_lab + 0.6 * N(0, 1))."""

    code: str
    name: str
    unit: str
    mean: float
    sd: float
    loading: float


LAB_SPECS: tuple[LabSpec, ...] = (
    LabSpec("2345-7", "glucose", "mg/dL", 110.0, 30.0, 0.3),
    LabSpec("2160-0", "creatinine", "mg/dL", 1.0, 0.4, 0.6),
    LabSpec("718-7", "hemoglobin", "g/dL", 13.0, 2.0, -0.6),
    LabSpec("6690-2", "wbc", "10*3/uL", 8.0, 3.0, 0.7),
    LabSpec("1988-5", "crp", "mg/L", 10.0, 15.0, 0.8),
    LabSpec("2524-7", "lactate", "mmol/L", 1.5, 0.8, 0.9),
    LabSpec("2951-2", "sodium", "mmol/L", 140.0, 4.0, 0.0),
    LabSpec("2823-3", "potassium", "mmol/L", 4.2, 0.5, 0.2),
)


@dataclass(frozen=True)
class LabReport:
    """How a site reports a lab: reported value = canonical value * factor, in `unit`."""

    unit: str
    factor: float


@dataclass(frozen=True)
class Scanner:
    """Site scanner: HU' = scale * HU + offset + N(0, noise_sd)."""

    manufacturer: str
    model: str
    scale: float
    offset: float
    noise_sd: float


@dataclass(frozen=True)
class Rescale:
    """Stored-value convention: HU = stored * slope + intercept; `signed` selects int16 storage."""

    intercept: float
    slope: float
    signed: bool


@dataclass(frozen=True)
class MissingShares:
    """Fraction of patients lacking each modality."""

    image: float
    labs: float
    notes: float


@dataclass(frozen=True)
class SiteProfile:
    """Everything that makes one site different from the others."""

    index: int
    name: str
    prefix: str
    prevalence: float
    missing: MissingShares
    scanner: Scanner
    rescale: Rescale
    lab_units: Mapping[str, LabReport]
    wording: Wording

    def lab_report(self, spec: LabSpec) -> LabReport:
        """Reporting unit and factor for `spec` at this site (canonical if not overridden)."""
        return self.lab_units.get(spec.code, LabReport(spec.unit, 1.0))


_BASE_PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        index=0, name="site-a", prefix="A", prevalence=0.30,
        missing=MissingShares(0.10, 0.05, 0.10),
        scanner=Scanner("Aurora Medical Systems", "AuroraCT 64", 1.00, 0.0, 10.0),
        rescale=Rescale(-1024.0, 1.0, signed=False),
        lab_units=MappingProxyType({}),
        wording=WORDING_A,
    ),
    SiteProfile(
        index=1, name="site-b", prefix="B", prevalence=0.45,
        missing=MissingShares(0.30, 0.10, 0.05),
        scanner=Scanner("Borealis Imaging", "Borealis Helix 16", 1.05, 20.0, 25.0),
        rescale=Rescale(0.0, 1.0, signed=True),
        lab_units=MappingProxyType({
            "2345-7": LabReport("mmol/L", 1.0 / 18.016),
            "2160-0": LabReport("umol/L", 88.42),
        }),
        wording=WORDING_B,
    ),
    SiteProfile(
        index=2, name="site-c", prefix="C", prevalence=0.20,
        missing=MissingShares(0.05, 0.35, 0.20),
        scanner=Scanner("Cirrus Healthcare", "Cirrus Vista 128", 0.95, -15.0, 15.0),
        rescale=Rescale(-1024.0, 0.5, signed=False),
        lab_units=MappingProxyType({
            "718-7": LabReport("g/L", 10.0),
            "6690-2": LabReport("10*9/L", 1.0),
            "1988-5": LabReport("mg/dL", 0.1),
            "2524-7": LabReport("mg/dL", 9.008),
        }),
        wording=WORDING_C,
    ),
)

_EXTRA_MANUFACTURERS: tuple[str, ...] = (
    "Delta Radiology", "Equinox Scanners", "Fjord Medical", "Gamma Tomography",
)


def site_name(k: int) -> str:
    """Folder name of site `k` (0 -> 'site-a')."""
    _check_index(k)
    return f"site-{string.ascii_lowercase[k]}"


def site_prefix(k: int) -> str:
    """Patient-id prefix of site `k` (0 -> 'A')."""
    _check_index(k)
    return string.ascii_uppercase[k]


def _check_index(k: int) -> None:
    """Raise ValueError unless 0 <= k < MAX_SITES."""
    if not 0 <= k < MAX_SITES:
        raise ValueError(f"site index must be in 0..{MAX_SITES - 1}, got {k}")


def site_profile(k: int, seed: int) -> SiteProfile:
    """Profile of site `k`: base profile k % 3, with small seeded perturbations for k >= 3."""
    _check_index(k)
    base = _BASE_PROFILES[k % 3]
    if k < 3:
        return base
    rng = np.random.default_rng([seed, k, _PROFILE_STREAM])
    prevalence = float(np.clip(base.prevalence + rng.uniform(-0.05, 0.05), 0.05, 0.95))
    m = base.missing
    jitter = rng.uniform(0.8, 1.2, size=3)
    missing = MissingShares(
        *(round(float(min(share * j, 0.5)), 4) for share, j in zip((m.image, m.labs, m.notes), jitter))
    )
    s = base.scanner
    scanner = Scanner(
        manufacturer=_EXTRA_MANUFACTURERS[(k - 3) % len(_EXTRA_MANUFACTURERS)],
        model=f"{s.model} unit {k + 1}",
        scale=round(s.scale + float(rng.uniform(-0.03, 0.03)), 4),
        offset=round(s.offset + float(rng.uniform(-8.0, 8.0)), 1),
        noise_sd=round(s.noise_sd * float(rng.uniform(0.8, 1.25)), 2),
    )
    return replace(
        base, index=k, name=site_name(k), prefix=site_prefix(k),
        prevalence=round(prevalence, 4), missing=missing, scanner=scanner,
    )
