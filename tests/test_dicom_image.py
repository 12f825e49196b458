"""read_image on real DICOM files written to tmp_path with pydicom: VOI, photometrics, frames,
series folders, compression and every quarantine reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space, get_encoder
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from client.site_data.imaging.dicom import UnusableImage, read_image

SIZE = 16
RNG = np.random.default_rng(3)
HU = RNG.integers(-1000, 1500, size=(SIZE, SIZE)).astype(np.int16)


def dataset(sop_class: str = CTImageStorage) -> Dataset:
    """A minimal explicit-VR little-endian dataset of `sop_class`, without pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.Modality = "TEST", "CT"
    return ds


def image(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int | None = None,
          **elements: object) -> Dataset:
    """A dataset holding `pixels` plus any extra elements given by keyword."""
    ds = dataset(CTImageStorage if photometric.startswith("MONO") else SecondaryCaptureImageStorage)
    ds.set_pixel_data(pixels, photometric, bits or pixels.dtype.itemsize * 8)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def load(ds: Dataset, tmp_path: Path, window: tuple[float, float] | None = None,
         frame_policy: str = "middle", name: str = "x.dcm") -> np.ndarray:
    return read_image(save(ds, tmp_path / name), size=SIZE, window=window, frame_policy=frame_policy)


def reason(path: Path, **kwargs: object) -> str:
    with pytest.raises(UnusableImage) as info:
        read_image(path, size=SIZE, window=None, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip((values - (center - width / 2)) / width, 0, 1)


def min_max(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def test_monochrome1_and_monochrome2_of_the_same_image_agree(tmp_path: Path) -> None:
    k = int(HU.max()) + int(HU.min())
    mirrored = (k - HU.astype(np.int32)).astype(np.int16)  # the same picture stored MONOCHROME1
    m2, m1 = image(HU), image(mirrored, "MONOCHROME1")
    out = load(m2, tmp_path, name="m2.dcm")
    assert np.allclose(out, min_max(HU), atol=1e-6)
    assert np.allclose(load(m1, tmp_path, name="m1.dcm"), out, atol=1e-6)
    assert np.allclose(load(m1, tmp_path, window=(k - 40.0, 400.0), name="m1w.dcm"),
                       load(m2, tmp_path, window=(40.0, 400.0), name="m2w.dcm"), atol=1e-6)
    for ds, center in ((m2, 40.0), (m1, k - 40.0)):
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, 400.0, "LINEAR_EXACT"
    assert np.allclose(load(m1, tmp_path, name="m1f.dcm"), load(m2, tmp_path, name="m2f.dcm"), atol=1e-6)
    inverted_same_values = load(image(HU, "MONOCHROME1"), tmp_path, name="inv.dcm")
    assert np.allclose(inverted_same_values, 1 - out, atol=1e-6)


def test_rescale_slope_and_intercept_give_modality_units(tmp_path: Path) -> None:
    stored = RNG.integers(0, 4096, size=(SIZE, SIZE)).astype(np.uint16)
    ds = image(stored, bits=12, RescaleSlope=2, RescaleIntercept=-1024)
    hu = stored * 2.0 - 1024
    assert np.allclose(load(ds, tmp_path, window=(40.0, 400.0)), linear(hu, 40, 400), atol=1e-6)


def test_file_window_then_configured_window_then_voi_lut_sequence(tmp_path: Path) -> None:
    ds = image(HU, WindowCenter=[40, 500], WindowWidth=[400, 2000])  # the first view is used
    x = HU.astype(np.float64)
    dicom_linear = np.clip((x - 39.5) / 399 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    assert np.allclose(load(ds, tmp_path), dicom_linear, atol=1e-6)
    assert np.allclose(load(ds, tmp_path, window=(300.0, 1000.0)), linear(x, 300, 1000), atol=1e-6)
    stored = RNG.integers(0, 256, size=(SIZE, SIZE)).astype(np.uint8)
    lut = np.where(np.arange(256) < 128, 0, 255 - np.arange(256))  # any non-linear table
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds = image(stored, WindowCenter=128, WindowWidth=256, VOILUTSequence=[item])
    assert np.allclose(load(ds, tmp_path, name="lut.dcm"), lut[stored] / 255.0, atol=1e-6)
    assert np.allclose(load(ds, tmp_path, window=(100.0, 50.0), name="lut.dcm"),
                       linear(stored.astype(float), 100, 50), atol=1e-6)


@pytest.mark.parametrize(("dtype", "bits"), [(np.uint8, 8), (np.int8, 8), (np.uint16, 12),
                                             (np.uint16, 16), (np.int16, 12), (np.int16, 16)])
def test_8_to_16_bit_signed_and_unsigned(tmp_path: Path, dtype: type, bits: int) -> None:
    info = np.iinfo(dtype)
    low = max(int(info.min), -(2 ** (bits - 1))) if info.min < 0 else 0
    high = min(int(info.max), 2 ** (bits - 1) - 1 if info.min < 0 else 2**bits - 1)
    stored = RNG.integers(low, high, size=(SIZE, SIZE), endpoint=True).astype(dtype)
    stored[0, 0], stored[0, 1] = low, high  # the full range, including negatives if signed
    assert np.allclose(load(image(stored, bits=bits), tmp_path), min_max(stored), atol=1e-6)


@pytest.mark.parametrize(("policy", "expected"), [("middle", 1), ("first", 0), ("mean", None)])
def test_multi_frame_policies(tmp_path: Path, policy: str, expected: int | None) -> None:
    base = RNG.integers(0, 500, size=(SIZE, SIZE))
    frames = np.stack([base, base + 100, base + 300]).astype(np.uint16)
    ds = image(frames, bits=16, RescaleSlope=1, RescaleIntercept=0)
    want = frames.mean(axis=0) if expected is None else frames[expected]
    got = load(ds, tmp_path, window=(500.0, 1000.0), frame_policy=policy)
    assert np.allclose(got, want / 1000.0, atol=1e-6)


def test_enhanced_per_frame_rescale_is_honoured(tmp_path: Path) -> None:
    frames = np.stack([HU, HU]).astype(np.int16)
    ds = image(frames)
    ds.PerFrameFunctionalGroupsSequence = []
    for intercept in (0, 100):
        transform, group = Dataset(), Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, intercept, "HU"
        group.PixelValueTransformationSequence = [transform]
        ds.PerFrameFunctionalGroupsSequence.append(group)
    first = load(ds, tmp_path, window=(0.0, 5000.0), frame_policy="first")
    middle = load(ds, tmp_path, window=(0.0, 5000.0), frame_policy="middle")
    assert np.allclose(middle - first, 100 / 5000.0, atol=1e-6)


def test_float_pixel_data(tmp_path: Path) -> None:
    values = np.linspace(-1, 1, SIZE * SIZE, dtype="<f4").reshape(SIZE, SIZE)
    values[5, 5] = np.nan  # not a number -> 0
    ds = dataset("1.2.840.10008.5.1.4.1.1.30")  # Parametric Map Storage
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.add_new(0x7FE00008, "OF", values.tobytes())  # Float Pixel Data
    want = np.nan_to_num((values + 1) / 2, nan=0.0)
    assert np.allclose(load(ds, tmp_path), want, atol=1e-6)
    assert np.allclose(load(ds, tmp_path, window=(0.0, 2.0)), want, atol=1e-6)


def quadrants() -> np.ndarray:
    rgb = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    half = SIZE // 2
    rgb[:half, :half, 0] = rgb[:half, half:, 1] = rgb[half:, :half, 2] = 255
    rgb[half:, half:] = 255
    return rgb


def test_rgb_and_ybr_become_bt601_luminance(tmp_path: Path) -> None:
    want = np.zeros((SIZE, SIZE))
    half = SIZE // 2
    want[:half, :half], want[:half, half:], want[half:, :half], want[half:, half:] = 0.299, 0.587, 0.114, 1
    assert np.allclose(load(image(quadrants(), "RGB"), tmp_path), want, atol=1e-6)
    ybr = convert_color_space(quadrants(), "RGB", "YBR_FULL")
    assert np.allclose(load(image(ybr, "YBR_FULL"), tmp_path, name="ybr.dcm"), want, atol=2 / 255)
    assert np.allclose(load(image(quadrants(), "RGB"), tmp_path, window=(0.0, 1.0)), want, atol=1e-6)


PALETTE_DATA_TAGS = {"Red": 0x00281201, "Green": 0x00281202, "Blue": 0x00281203}


def palette_image(indices: np.ndarray) -> Dataset:
    """8-bit indices; red ramps up, green ramps down, blue is 0 (16-bit palette entries)."""
    ds = image(indices, "PALETTE COLOR")
    ramp = (np.arange(256) * 257).astype("<u2")
    for colour, values in (("Red", ramp), ("Green", ramp[::-1]), ("Blue", np.zeros(256, "<u2"))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds.add_new(PALETTE_DATA_TAGS[colour], "OW", values.tobytes())
    return ds


def test_palette_colour_is_applied_then_quarantined_when_broken(tmp_path: Path) -> None:
    indices = RNG.integers(0, 256, size=(SIZE, SIZE)).astype(np.uint8)
    want = (0.299 * indices + 0.587 * (255 - indices)) / 255.0
    assert np.allclose(load(palette_image(indices), tmp_path), want, atol=1e-6)
    broken = palette_image(indices)
    del broken.GreenPaletteColorLookupTableData
    assert reason(save(broken, tmp_path / "broken.dcm")) == "palette colour image"


def test_unsupported_photometric_interpretation(tmp_path: Path) -> None:
    ds = image(quadrants(), "RGB")
    ds.PhotometricInterpretation = "HSV"
    assert reason(save(ds, tmp_path / "hsv.dcm")) == "unsupported photometric interpretation: HSV"
    ds.PhotometricInterpretation = "SEPIA"
    assert reason(save(ds, tmp_path / "odd.dcm")) == "unsupported photometric interpretation: other"


def test_series_folder_uses_the_middle_instance_by_instance_number(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    for name, number in zip("edcba", (1, 2, 3, 4, 5)):  # file names in reverse order
        save(image(np.full((SIZE, SIZE), number * 10, np.int16), InstanceNumber=number),
             folder / f"{name}.dcm")
    (folder / "notes.txt").write_text("not dicom")
    (folder / ".hidden.dcm").write_bytes((folder / "a.dcm").read_bytes())
    report = dataset(BasicTextSRStorage)
    save(report, folder / "report.dcm")
    got = read_image(folder, size=SIZE, window=(50.0, 100.0))
    assert np.allclose(got, 0.3)  # InstanceNumber 3 -> 30 HU -> (30 - 0) / 100
    (folder / "c.dcm").write_bytes((folder / "c.dcm").read_bytes()[:-200])  # middle truncated
    assert np.allclose(read_image(folder, size=SIZE, window=(50.0, 100.0)), 0.2)  # nearest: 2


def test_series_folder_without_images(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert reason(folder) == "no image instances in folder"
    save(dataset(BasicTextSRStorage), folder / "sr.dcm")
    assert reason(folder) == "no image instances in folder"


def test_rle_lossless_decodes_equal_to_uncompressed(tmp_path: Path) -> None:
    ds = image(HU, WindowCenter=40, WindowWidth=400)
    plain = load(ds, tmp_path, name="plain.dcm")
    ds.compress(RLELossless)
    assert np.array_equal(load(ds, tmp_path, name="rle.dcm"), plain)


def test_jpeg2000_lossless_decodes_equal_to_uncompressed(tmp_path: Path) -> None:
    if not get_encoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 encoder plugin installed")
    ds = image(np.tile(HU, (4, 4)), RescaleSlope=1, RescaleIntercept=0)  # 64 x 64: 6 J2K levels
    plain = load(ds, tmp_path, name="plain.dcm")
    ds.compress(JPEG2000Lossless)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(load(ds, tmp_path, name="j2k.dcm"), plain)


def test_damaged_and_foreign_files_are_quarantined(tmp_path: Path) -> None:
    whole = save(image(HU), tmp_path / "whole.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-100])
    (tmp_path / "stub.dcm").write_bytes(whole[:300])
    (tmp_path / "text.dcm").write_bytes(b"patient_id,label\nP1,1\n" * 20)
    (tmp_path / "zero.dcm").write_bytes(b"")
    short = image(HU)
    short.Rows = SIZE * 2  # the header promises more pixels than the file holds
    save(short, tmp_path / "short.dcm")
    assert reason(tmp_path / "cut.dcm") == "truncated or corrupt file"
    assert reason(tmp_path / "stub.dcm") == "truncated or corrupt file"
    assert reason(tmp_path / "short.dcm") == "truncated or corrupt file"
    assert reason(tmp_path / "text.dcm") == "not a DICOM file"
    assert reason(tmp_path / "zero.dcm") == "not a DICOM file"
    assert reason(tmp_path / "missing.dcm") == "file not found"


def test_objects_without_an_image_are_quarantined(tmp_path: Path) -> None:
    assert reason(save(dataset(CTImageStorage), tmp_path / "np.dcm")) == "no pixel data"
    sr = dataset(BasicTextSRStorage)
    sr.Modality = "SR"
    assert reason(save(sr, tmp_path / "sr.dcm")) == "non-image object: Basic Text SR Storage"
    empty = image(HU)
    empty.Rows, empty.PixelData = 0, b""
    assert reason(save(empty, tmp_path / "empty.dcm")) == "empty image"


def test_resize_averages_down_and_interpolates_up(tmp_path: Path) -> None:
    big = RNG.integers(0, 1000, size=(2 * SIZE, 2 * SIZE)).astype(np.uint16)
    path = save(image(big), tmp_path / "big.dcm")
    down = read_image(path, size=SIZE, window=(500.0, 1000.0))
    assert np.allclose(down, (big / 1000.0).reshape(SIZE, 2, SIZE, 2).mean(axis=(1, 3)), atol=1e-6)
    up = read_image(path, size=3 * SIZE, window=None)
    assert up.shape == (3 * SIZE, 3 * SIZE) and up.dtype == np.float32
    assert 0.0 <= up.min() and up.max() <= 1.0


def test_configuration_errors_are_not_quarantine_reasons(tmp_path: Path) -> None:
    path = save(image(HU), tmp_path / "ok.dcm")
    for kwargs in ({"frame_policy": "last"}, {"window": (40.0, 0.0)}, {"size": 0}):
        arguments = {"size": SIZE, "window": None, **kwargs}
        with pytest.raises(ValueError):
            read_image(path, **arguments)  # type: ignore[arg-type]
