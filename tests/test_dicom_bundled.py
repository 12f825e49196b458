"""read_image over every file bundled in pydicom's test_files folder (no network: the folder is
enumerated directly, get_testdata_file is never called).

Every file either loads as a finite [0, 1] image or raises UnusableImage with a vocabulary
reason; nothing else may escape. Run with -s to see the counts by outcome.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from client.site_data.imaging.dicom import UnusableImage, read_image
from client.site_data.imaging.reasons import is_known_reason

ROOT = Path(pydicom.data.__file__).parent / "test_files"
SIZE = 32
LOADED = "loaded"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# The bundled files are odd on purpose (padding, wrong VR, bad values): pydicom warns about them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def has_pixel_data(path: Path) -> bool:
    """Whether pydicom, reading as leniently as it can, finds a pixel data element."""
    try:
        ds = pydicom.dcmread(path, force=True, defer_size=256)
        return any(keyword in ds for keyword in PIXEL_KEYWORDS)
    except Exception:  # noqa: BLE001 - a file the lenient reader rejects has no pixel data
        return False


def outcome(path: Path) -> str:
    """"loaded" (after checking the array) or the quarantine reason."""
    try:
        image = read_image(path, size=SIZE, window=None)
    except UnusableImage as bad:
        return bad.reason
    assert image.shape == (SIZE, SIZE) and image.dtype == np.float32, path.name
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0, path.name
    return LOADED


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[bool, str]]:
    """Relative path -> (has pixel data, outcome) for every bundled file."""
    assert ROOT.is_dir(), ROOT
    files = sorted(p for p in ROOT.rglob("*") if p.is_file())
    return {str(p.relative_to(ROOT)): (has_pixel_data(p), outcome(p)) for p in files}


def test_every_bundled_file_loads_or_is_quarantined_with_a_known_reason(
        outcomes: dict[str, tuple[bool, str]]) -> None:
    with_pixels = Counter(result for has, result in outcomes.values() if has)
    without = Counter(result for has, result in outcomes.values() if not has)
    print(f"\nbundled pydicom test files: {len(outcomes)}; with pixel data: {sum(with_pixels.values())}")
    for title, counts in (("with pixel data", with_pixels), ("without pixel data", without)):
        print(f"  {title}:")
        for result, n in counts.most_common():
            print(f"    {n:4d}  {result}")
    unknown = {name: r for name, (_, r) in outcomes.items() if r != LOADED and not is_known_reason(r)}
    assert not unknown
    assert sum(with_pixels.values()) >= 90 and with_pixels[LOADED] >= 85, with_pixels
    assert LOADED not in without, without


@pytest.mark.parametrize("name", [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
    "dicomdirtests/77654033/CR1/6154",  # CR, MONOCHROME1
    "examples_palette.dcm", "examples_ybr_color.dcm", "SC_rgb_jpeg_gdcm.dcm", "rtdose.dcm",
])
def test_known_good_files_load(outcomes: dict[str, tuple[bool, str]], name: str) -> None:
    if name not in outcomes:
        pytest.skip(f"{name} is not bundled with this pydicom")
    assert outcomes[name] == (True, LOADED)


@pytest.mark.parametrize(("name", "reason"), [
    ("MR_truncated.dcm", "truncated or corrupt file"),
    ("JPEG-lossy.dcm", "no permissive decoder for JPEG Extended (Process 2 and 4)"),
    ("JPGExtended.dcm", "no permissive decoder for JPEG Extended (Process 2 and 4)"),
    # its codestream's SIZ marker states 3,722,445,056 x 1024 samples: refused before decoding
    ("JPEG2000-embedded-sequence-delimiter.dcm", "image too large"),
    ("meta_missing_tsyntax.dcm", "missing transfer syntax"),
    ("nested_priv_SQ.dcm", "invalid image attributes"),
    ("test-SR.dcm", "non-image object: Comprehensive SR Storage"),
    ("reportsi.dcm", "non-image object: Basic Text SR Storage"),
    ("rtplan.dcm", "non-image object: RT Plan Storage"),
    # no preamble / "DICM" prefix, but a bare dataset starting with group 0008: read
    ("rtstruct.dcm", "non-image object: RT Structure Set Storage"),
    ("ExplVR_BigEndNoMeta.dcm", "non-image object: RT Ion Plan Storage"),  # bare, big endian
    ("waveform_ecg.dcm", "non-image object: 12-lead ECG Waveform Storage"),
    ("dicomdirtests/DICOMDIR", "non-image object: Media Storage Directory Storage"),
    ("dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM000000", "no pixel data"),
    ("no_meta.dcm", "not a DICOM file"),
    ("README.txt", "not a DICOM file"),
])
def test_known_problem_files_are_quarantined(outcomes: dict[str, tuple[bool, str]], name: str,
                                             reason: str) -> None:
    if name not in outcomes:
        pytest.skip(f"{name} is not bundled with this pydicom")
    assert outcomes[name][1] == reason


def test_one_image_in_many_encodings_preprocesses_identically() -> None:
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
             "MR_small_expb.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    images = [read_image(ROOT / n, size=SIZE, window=(500.0, 1000.0)) for n in names if (ROOT / n).is_file()]
    assert len(images) >= 2
    for other in images[1:]:
        assert np.array_equal(images[0], other)


def test_a_bundled_series_folder_loads_its_middle_instance() -> None:
    folder = ROOT / "dicomdirtests" / "98892003" / "MR2"
    if not folder.is_dir():
        pytest.skip("dicomdirtests/98892003/MR2 is not bundled with this pydicom")
    numbered = sorted((int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber), p.name)
                      for p in folder.iterdir())
    middle = folder / numbered[len(numbered) // 2][1]
    got = read_image(folder, size=SIZE, window=None)
    assert np.array_equal(got, read_image(middle, size=SIZE, window=None))
