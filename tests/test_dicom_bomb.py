"""DICOM in bounded memory (sec-dicom-bomb): every file of tests/bad_inputs_dicom.py, loaded as
part of a real site in a child process under an RSS watchdog, is quarantined with its reason (or
loads) while the child's peak RSS stays well under 1 GiB; the verdicts are cached and served
without decoding; files without a preamble are read; decoder tracebacks stay off the console."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

import client.site_data.imaging.cache as cache_module
import client.site_data.imaging.dicom as dicom_module
import client.site_data.imaging.pixels as pixels_module
from bad_inputs_dicom import (
    ALL,
    BOMBS,
    PALETTE_COLOUR,
    TOO_LARGE,
    WELL_FORMED,
    header,
    j2k_codestream,
    jpeg_codestream,
    preambleless,
    rle_segments,
    segmented_palette,
    segmented_palette_bomb,
    small_ct,
    small_ct_bytes,
    sparse_2gib,
    write_encapsulated,
)
from client.site_data.imaging.cache import REASON_TAG, entry_key, entry_path, load_image_cached
from client.site_data.imaging.dicom import DicomLimits, UnusableImage, open_image_file, read_image
from client.site_data.imaging.limits import MAX_SERIES_ENTRIES, SERIES_ATTEMPTS
from client.site_data.imaging.pixels import segmented_length
from client.site_data.imaging.reasons import TOO_MANY_FILES, is_known_reason
from client.site_data.loader import load_site
from client.site_data.manifest import safe_path
from client.site_data.imaging.source import j2k_samples, jpeg_samples
from configs.load import load_experiment
from synth.hospitals import write_hospitals

REPO = Path(__file__).resolve().parents[1]
KILL_MB = 1024  # the watchdog's limit: the child is killed above it
PEAK_MB = 768  # what the whole site load may peak at (imports alone are ~350 MB)
SIZE = 16

CHILD = """
import json, sys
from pathlib import Path
def peak_mb():  # this process image's RSS high-water mark (ru_maxrss would count the forked parent)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
from client.site_data import load_site
from client.site_data.imaging.cache import load_image_cached
from client.site_data.imaging.reasons import UnusableImage
from configs.load import load_experiment
site, cache, files = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
cfg = load_experiment([]).data
arrays, report = load_site(site, cfg, cache_dir=cache)
verdicts, written = {}, set()
window = None if cfg.window_center is None else (cfg.window_center, cfg.window_width or 1.0)
for name, relative in files.items():  # again, one by one: every verdict must come from the cache
    try:
        load_image_cached(site / relative, cache_dir=cache, size=cfg.image_size, window=window,
                          frame_policy=cfg.frame_policy, written=written)
        verdicts[name] = None
    except UnusableImage as bad:
        verdicts[name] = bad.reason
print(json.dumps({"quarantined": dict(report.quarantined_images), "verdicts": verdicts,
                  "written": len(written), "usable": report.usable_patients,
                  "peak_mb": peak_mb()}))
"""


def run_watched(args: list[str], limit_mb: int = KILL_MB, timeout: float = 240.0) -> tuple[str, str, float]:
    """Run a Python child, killing it above `limit_mb` RSS; (stdout, stderr, peak RSS seen)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, cwd=REPO)
    peak, start = 0.0, time.monotonic()
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as status:
                rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
        except (OSError, StopIteration):
            rss = 0.0
        peak = max(peak, rss)
        if rss > limit_mb or time.monotonic() - start > timeout:
            child.kill()
            out, err = child.communicate()
            seconds = time.monotonic() - start
            pytest.fail(f"child killed at {rss:.0f} MB RSS after {seconds:.1f} s\n{err[-3000:]}")
        time.sleep(0.02)
    out, err = child.communicate()
    assert child.returncode == 0, err[-3000:]
    return out, err, peak


@pytest.fixture(scope="module")
def bomb_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A 30-patient synthetic site whose first len(ALL) patients' images are the corpus files."""
    root = tmp_path_factory.mktemp("bombs")
    write_hospitals(root, sites=1, patients=30, seed=1, image_size=32)
    site = root / "site-a"
    paths = pd.read_csv(site / "manifest.csv", dtype=str)["image_path"].tolist()
    assert len(paths) >= len(ALL)
    files = {}
    for entry, relative in zip(ALL, paths, strict=False):
        (site / relative).unlink()
        entry.make(site / relative)
        files[entry.name] = relative
    return site, files


@pytest.fixture(scope="module")
def loaded(bomb_site: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    """The child's report of loading the bomb site (then each file again through the cache)."""
    site, files = bomb_site
    out, _, peak = run_watched(["-c", CHILD, str(site), str(site.parent / "cache"), json.dumps(files)])
    result = json.loads(out.strip().splitlines()[-1])
    result["watched_peak_mb"] = peak
    print(f"\nsite load with {len(ALL)} bombs: peak RSS {result['peak_mb']:.0f} MB "
          f"(watchdog saw {peak:.0f} MB)")
    return result


@pytest.mark.slow
@pytest.mark.parametrize("entry", ALL, ids=lambda e: e.name)
def test_each_file_gets_its_verdict(loaded: dict[str, Any], entry: Any) -> None:
    assert loaded["verdicts"][entry.name] == entry.reason


@pytest.mark.slow
def test_the_site_loads_within_bounded_memory(loaded: dict[str, Any]) -> None:
    assert loaded["peak_mb"] < PEAK_MB and loaded["watched_peak_mb"] < PEAK_MB, loaded
    bombs = sum(1 for e in ALL if e.reason == TOO_LARGE)
    assert loaded["quarantined"][TOO_LARGE] == bombs
    assert loaded["usable"] >= 30 - sum(1 for e in ALL if e.reason is not None)


@pytest.mark.slow
def test_verdicts_are_cached_and_served_without_decoding(
        loaded: dict[str, Any], bomb_site: tuple[Path, dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert loaded["written"] == 0  # the second pass in the child was all cache hits
    site, files = bomb_site
    cache, cfg = site.parent / "cache", load_experiment([]).data
    window = None if cfg.window_center is None else (cfg.window_center, cfg.window_width or 1.0)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "image_from_file", no_decoding)
    for entry in BOMBS + tuple(e for e in WELL_FORMED if e.reason):
        path = site / files[entry.name]
        if entry.cached:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
            key = entry_key(digest.hexdigest(), size=cfg.image_size, window=window,
                            frame_policy=cfg.frame_policy)
            assert entry_path(cache, key).read_bytes() == REASON_TAG + entry.reason.encode(), entry.name
        with pytest.raises(UnusableImage) as info:
            load_image_cached(path, cache_dir=cache, size=cfg.image_size, window=window,
                              frame_policy=cfg.frame_policy)
        assert info.value.reason == entry.reason, entry.name


def test_a_file_over_the_size_cap_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, cache = tmp_path / "huge.dcm", tmp_path / "cache"
    sparse_2gib(path)

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("opened")

    monkeypatch.setattr(cache_module, "open_image_file", no_open)
    used: set[Path] = set()
    with pytest.raises(UnusableImage, match=TOO_LARGE):
        load_image_cached(path, cache_dir=cache, size=SIZE, window=None, used=used)
    assert not used and not cache.exists()  # nothing read, nothing cached: the stat decides


def test_a_series_folder_of_oversized_files_is_too_large(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    sparse_2gib(folder / "1.dcm")
    with pytest.raises(UnusableImage, match=TOO_LARGE):
        read_image(folder, size=SIZE, window=None)
    (folder / "2.dcm").write_bytes(small_ct_bytes())  # one good instance: used
    assert read_image(folder, size=SIZE, window=None).shape == (SIZE, SIZE)
    assert load_image_cached(folder, cache_dir=tmp_path / "cache", size=SIZE, window=None).shape == (SIZE, SIZE)


def test_a_fifo_is_not_readable_and_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    with pytest.raises(UnusableImage, match="file not readable"):
        with open_image_file(fifo):
            pass


@pytest.mark.parametrize("kind", ["ct_dicm", "ct_meta", "ct_bare"])
def test_a_file_without_preamble_is_read(tmp_path: Path, kind: str) -> None:
    full = tmp_path / "full.dcm"
    full.write_bytes(small_ct_bytes())
    cut = tmp_path / f"{kind}.dcm"
    preambleless(kind)(cut)
    assert not cut.read_bytes().startswith(b"\0" * 128)
    want = read_image(full, size=SIZE, window=(40.0, 400.0))
    assert np.array_equal(read_image(cut, size=SIZE, window=(40.0, 400.0)), want)


@pytest.mark.parametrize("kind", ["sr_dicm", "sr_meta", "sr_bare"])
def test_a_non_image_object_without_preamble_gets_its_non_image_reason(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.dcm"
    preambleless(kind)(path)
    with pytest.raises(UnusableImage, match="^non-image object: Basic Text SR Storage$"):
        read_image(path, size=SIZE, window=None)


def test_text_that_is_not_dicom_stays_not_dicom(tmp_path: Path) -> None:
    for name, data in (("csv", b"patient_id,label\nP1,1\n" * 20), ("zeros", bytes(4096)),
                       ("dicm_text", b"DICM" + b"hello world" * 20), ("short", b"\x08\x00")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnusableImage, match="^not a DICOM file$"):
            read_image(tmp_path / name, size=SIZE, window=None)


def test_limits_are_site_owned_caps_and_part_of_the_cache_key(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(small_ct_bytes())  # 32 x 32, 16 bit
    tight = DicomLimits(max_frame_samples=32 * 32 - 1)
    assert read_image(path, size=SIZE, window=None).shape == (SIZE, SIZE)
    with pytest.raises(UnusableImage, match=TOO_LARGE):
        read_image(path, size=SIZE, window=None, limits=tight)
    for limits in (DicomLimits(max_frame_mb=1, max_pixel_data_mb=1, max_file_mb=1),
                   DicomLimits(max_header_mb=1)):
        assert read_image(path, size=SIZE, window=None, limits=limits).shape == (SIZE, SIZE)
    cache = tmp_path / "cache"
    assert load_image_cached(path, cache_dir=cache, size=SIZE, window=None).shape == (SIZE, SIZE)
    with pytest.raises(UnusableImage, match=TOO_LARGE):  # a tighter cap is not served the old image
        load_image_cached(path, cache_dir=cache, size=SIZE, window=None, limits=tight)
    assert entry_key("ab" * 32, size=SIZE, window=None, frame_policy="middle") != entry_key(
        "ab" * 32, size=SIZE, window=None, frame_policy="middle", limits=tight)
    with pytest.raises(ValueError):
        DicomLimits(max_file_mb=0)


def test_coded_image_sizes_are_read_from_jpeg_and_jpeg2000_headers() -> None:
    assert jpeg_samples(jpeg_codestream(65535, 65535, 3)) == 65535 * 65535 * 3
    assert jpeg_samples(jpeg_codestream(100, 200, 1, sof=0xF7)) == 100 * 200
    assert jpeg_samples(b"\xff\xd8\xff\xe0\x00\x10" + b"JFIF\0" + b"\0" * 9 + jpeg_codestream(7, 9)[2:]) == 63
    assert jpeg_samples(b"no codestream") is None
    assert j2k_samples(j2k_codestream(60000, 50000, 3)) == 60000 * 50000 * 3
    assert j2k_samples(b"\xff\x4f\xff\x51") is None
    pixels = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    ds = header(64, 64, "1.2.840.10008.1.2.1")
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    for syntax, measure in ((JPEG2000Lossless, j2k_samples), (JPEGLSLossless, jpeg_samples)):
        if not get_encoder(syntax).is_available:
            continue
        encoded = next(get_encoder(syntax).iter_encode(ds))
        assert measure(encoded) == 64 * 64


def undecodable_rle(path: Path) -> None:
    """A 64 x 64 RLE image (within every cap) whose one segment decodes to far too few bytes."""
    write_encapsulated(path, header(64, 64, RLELossless), [rle_segments(1, b"\x00\x05" * 3)])


CONSOLE_CHILD = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING)  # a console handler on the root logger, as a CLI may set
from client.site_data.imaging.dicom import UnusableImage, read_image
try:
    read_image(Path(sys.argv[1]), size=16, window=None)
except UnusableImage as bad:
    print(bad.reason)
"""


def test_decoder_tracebacks_go_to_the_debug_log_not_the_console(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bad_rle.dcm"
    undecodable_rle(path)
    out, err, _ = run_watched(["-c", CONSOLE_CHILD, str(path)], timeout=120)
    assert out.strip() == "pixel data cannot be decoded"
    assert "Traceback" not in err and "Unable to decode" not in err and "Warning" not in err, err
    with caplog.at_level(logging.DEBUG, logger="fedclinic.site.dicom"):
        with pytest.raises(UnusableImage, match="^pixel data cannot be decoded$"):
            read_image(path, size=SIZE, window=None)
    assert any(r.exc_info for r in caplog.records if r.name == "fedclinic.site.dicom")


def test_frames_are_read_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """frame_policy mean decodes every frame, each once, in order, never all at once."""
    import client.site_data.imaging.source as source
    frames = np.stack([np.full((8, 8), 100 * k, np.uint16) for k in range(5)])
    ds = small_ct()
    ds.set_pixel_data(frames, "MONOCHROME2", 16)
    ds.compress(RLELossless)
    path = tmp_path / "multi.dcm"
    ds.save_as(path, enforce_file_format=True)
    seen: list[int] = []
    original = source.PixelSource.frame

    def spy(self: Any, index: int, count: int) -> Any:
        seen.append(index)
        arr, photometric = original(self, index, count)
        assert arr.shape == (8, 8)
        return arr, photometric

    monkeypatch.setattr(source.PixelSource, "frame", spy)
    image = read_image(path, size=8, window=(500.0, 1000.0), frame_policy="mean")  # low = 0
    assert seen == [0, 1, 2, 3, 4]
    assert np.allclose(image, 0.2, atol=1e-6) and image.dtype == np.float32
    seen.clear()
    read_image(path, size=8, window=None, frame_policy="middle")
    assert seen == [2]


def test_an_image_frame_is_not_decoded_past_the_header_caps_in_process(tmp_path: Path) -> None:
    """The cheap bombs, in this process too (each refused from its header: nothing allocated)."""
    cheap = [e for e in BOMBS if e.name.startswith(("rle_mono", "rle_rgb", "jpeg", "j2k", "rle_frames",
                                                    "native_frames", "bits_allocated", "deflate_30000"))]
    assert len(cheap) >= 10
    for entry in cheap:
        path = tmp_path / f"{entry.name}.dcm"
        entry.make(path)
        with pytest.raises(UnusableImage) as info:
            read_image(path, size=SIZE, window=None)
        assert info.value.reason == TOO_LARGE, entry.name


def test_image_bytes_still_work(tmp_path: Path) -> None:
    from client.site_data.imaging.dicom import image_from_bytes
    data = small_ct_bytes()
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    want = read_image(path, size=SIZE, window=None)
    assert np.array_equal(image_from_bytes(data, size=SIZE, window=None), want)


# --- Segmented Palette Color LUTs: counted from their segment headers before any expansion ---

def test_segmented_lut_entries_are_counted_from_segment_headers_alone() -> None:
    words = np.array([0, 3, 5, 6, 7, 1, 10, 900, 0, 1, 4], dtype=np.uint16)  # discrete 3, linear 10, discrete 1
    assert segmented_length(words, 14) == 14
    assert segmented_length(np.append(words, 0), 14) == 14  # a trailing pad entry
    for bad, limit in (
            (words, 13),  # over the limit (the descriptor's number of entries)
            (np.array([1, 5, 9], np.uint16), 100),  # a linear first segment has no start value
            (np.array([0, 1, 5, 2, 1, 0, 0], np.uint16), 100),  # indirect: refused
            (np.array([0, 1, 5, 7, 1], np.uint16), 100),  # unknown segment type
            (np.array([0, 1, 5, 1, 0, 9], np.uint16), 100),  # an empty segment
            (np.array([0, 9, 5, 6], np.uint16), 100),  # a discrete segment cut by the end
            (np.array([0, 1, 5] + [1, 65535, 0] * 3, np.uint16), 65536)):  # 196,606 entries
        with pytest.raises(UnusableImage, match=f"^{PALETTE_COLOUR}$"):
            segmented_length(bad, limit)


def test_a_segmented_palette_past_its_descriptor_is_quarantined_unexpanded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two linear segments of 65,535 entries: 131,071 > 65,536; refused from the headers, before
    the frame is decoded. (pydicom expanded such tables without bound: 20,000 segments passed
    3 GB; that one is in the corpus, loaded under the watchdog.)"""
    path = tmp_path / "palette.dcm"
    segmented_palette_bomb(2)(path)
    monkeypatch.setattr(pixels_module, "decode_frame", lambda *a: pytest.fail("decoded"))
    monkeypatch.setattr(pixels_module.np, "linspace", lambda *a, **k: pytest.fail("expanded"))
    with pytest.raises(UnusableImage, match=f"^{PALETTE_COLOUR}$"):
        read_image(path, size=SIZE, window=None)
    segmented_palette_bomb(20_000)(path)  # the red team's 365 KB file
    with pytest.raises(UnusableImage, match=f"^{PALETTE_COLOUR}$"):
        load_image_cached(path, cache_dir=tmp_path / "cache", size=SIZE, window=None)


def test_a_segmented_palette_within_its_descriptor_is_applied_once_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels import apply_color_lut
    ramp = [0, 1, 0, 1, 255, 65535]  # 0, then 255 steps up to 65535: 256 entries
    ds = segmented_palette(ramp, entries=256, rows=32)
    ds.PixelData = (np.arange(32 * 32) % 256).astype(np.uint8).tobytes()
    path = tmp_path / "palette.dcm"
    ds.save_as(path, enforce_file_format=True)
    calls: list[int] = []
    expand = pixels_module.expand_segmented
    monkeypatch.setattr(pixels_module, "expand_segmented", lambda *a: calls.append(1) or expand(*a))
    monkeypatch.setattr(pixels_module, "BLOCK_SAMPLES", 64)  # 16 blocks of 2 rows
    image = read_image(path, size=32, window=None)
    assert len(calls) == 3  # once per channel for the whole file, not per block
    rgb = apply_color_lut(np.arange(32 * 32).reshape(32, 32) % 256, ds)  # pydicom, as reference
    assert np.allclose(image, rgb[..., 0] / 65535.0, atol=1e-5)  # grey palette: R = G = B
    assert np.allclose(image, (np.arange(32 * 32).reshape(32, 32) % 256) / 255.0, atol=1e-5)


def test_palette_lut_data_must_match_its_descriptor(tmp_path: Path) -> None:
    ds = segmented_palette([0, 1, 0], rows=8)
    for colour, tag in (("Red", 0x00281221), ("Green", 0x00281222), ("Blue", 0x00281223)):
        del ds[tag]
        ds.add_new(0x00281200 + {"Red": 1, "Green": 2, "Blue": 3}[colour], "OW",
                   np.arange(256, dtype="<u2").tobytes())
    for entries, loads in ((256, True), (512, True), (300, False), (0, False)):  # 512: 8-bit entries
        for tag in (0x00281101, 0x00281102, 0x00281103):
            ds[tag].value = [entries, 0, 16]
        path = tmp_path / f"plain_{entries}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if loads:
            assert read_image(path, size=8, window=None).shape == (8, 8)
        else:
            with pytest.raises(UnusableImage, match=f"^{PALETTE_COLOUR}$"):
                read_image(path, size=8, window=None)


# --- Series folders: a member cap before anything is resolved, hashed or parsed ---

def test_a_series_folder_over_the_member_cap_is_quarantined_before_any_member_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_known_reason(TOO_MANY_FILES)
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(MAX_SERIES_ENTRIES + 1):
        (folder / f"{i:05d}.dcm").write_bytes(b"x")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was read")

    monkeypatch.setattr(cache_module, "_file_digest", never)  # nothing hashed
    monkeypatch.setattr(dicom_module, "_series_key", never)  # no header parsed
    monkeypatch.setattr(dicom_module, "read_file", never)  # nothing decoded
    cache, used, written = tmp_path / "cache", set(), set()
    for _ in range(2):  # the check is the listing alone: nothing to cache, same verdict each time
        with pytest.raises(UnusableImage, match=f"^{TOO_MANY_FILES}$"):
            load_image_cached(folder, cache_dir=cache, size=SIZE, window=None, used=used, written=written)
    assert not used and not written and not cache.exists()
    with pytest.raises(UnusableImage, match=f"^{TOO_MANY_FILES}$"):
        read_image(folder, size=SIZE, window=None)
    resolve = Path.resolve
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: never() if self.parent == folder
                        else resolve(self, strict=strict))
    assert safe_path(tmp_path, "series") == (folder.resolve(), None)  # members not resolved
    (folder / "00000.dcm").unlink()  # at the cap: read as a series (its members are junk)
    monkeypatch.undo()
    assert safe_path(tmp_path, "series") == (folder.resolve(), None)
    with pytest.raises(UnusableImage, match="^no image instances in folder$"):
        load_image_cached(folder, cache_dir=cache, size=SIZE, window=None)


def test_a_site_with_an_oversized_series_folder_quarantines_it(tmp_path: Path) -> None:
    write_hospitals(tmp_path, sites=1, patients=10, seed=1, image_size=32)
    site = tmp_path / "site-a"
    manifest = pd.read_csv(site / "manifest.csv", dtype=str)
    folder = site / "images" / "bigseries"
    folder.mkdir()
    for i in range(MAX_SERIES_ENTRIES + 1):
        (folder / f"{i:05d}.dcm").write_bytes(b"")
    manifest.loc[0, "image_path"] = "images/bigseries"
    manifest.to_csv(site / "manifest.csv", index=False)
    _, report = load_site(site, load_experiment([]).data, cache_dir=tmp_path / "cache")
    assert dict(report.quarantined_images) == {TOO_MANY_FILES: 1}


def test_a_series_folder_tries_a_bounded_number_of_instances(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    ds = small_ct()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # half the declared pixels: corrupt
    for i in range(40):
        ds.InstanceNumber = i
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    tried: list[str] = []
    original = dicom_module.read_file

    def spy(path: Path, **kwargs: Any) -> Any:
        tried.append(path.name)
        return original(path, **kwargs)

    monkeypatch.setattr(dicom_module, "read_file", spy)
    with pytest.raises(UnusableImage, match="^truncated or corrupt file$"):
        read_image(folder, size=SIZE, window=None)
    assert len(tried) == SERIES_ATTEMPTS and tried[0] == "020.dcm"
    assert sorted(tried) == [f"{i:03d}.dcm" for i in range(16, 25)]
    tried.clear()
    good = small_ct()
    good.InstanceNumber = 24
    good.save_as(folder / "024.dcm", enforce_file_format=True)  # the 9th nearest decodes: used
    assert read_image(folder, size=SIZE, window=None).shape == (SIZE, SIZE)
