"""Image ingest throughput: first pass (decode + preprocess, cold cache) vs cached pass.

    python bench/ingest.py [--n 200] [--size 224] [--compressed] [--seed 0]

Writes N synthetic 512 x 512 int16 CT slices (explicit VR little endian, or RLE Lossless with
--compressed) to a temporary folder, loads them all through client.site_data.imaging.cache with an empty
cache folder (first pass), then again with the warm cache three times (median reported).
The first pass reads and hashes every file and records each digest in the cache's hash memo
(keyed by the file's stat signature); cached passes stat each file and reuse the memoised digest
instead of re-reading and re-hashing it. A file modified (mtime or ctime) within RECENT_S (2 s)
of being hashed is never memoised, so after writing the files the benchmark waits until the
newest one is older than that, before the first pass (untimed; printed). Files freshly written
at ingest time would be re-hashed on every load until they settle.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from client.site_data.imaging.cache import RECENT_S, load_image_cached  # the project is installed editable

SIDE = 512
TARGET_RATIO = 20.0
WARM_REPEATS = 3


def ct_slice(rng: np.random.Generator) -> np.ndarray:
    """A CT-like slice in stored values (HU + 1024): air, a body ellipse, a few blobs, noise."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE - 0.5
    body = (yy / 0.42) ** 2 + (xx / 0.46) ** 2 <= 1.0
    hu = np.where(body, 40.0, -1000.0)
    for _ in range(4):
        cy, cx, radius = rng.uniform(-0.25, 0.25, 2).tolist() + [rng.uniform(0.02, 0.08)]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2)
        hu += np.where(body, rng.uniform(-100, 300), 0) * blob
    hu += rng.normal(0.0, 12.0, hu.shape)
    return np.clip(np.rint(hu + 1024), -1024, 3071).astype(np.int16)


def write_slice(path: Path, stored: np.ndarray, number: int, compressed: bool) -> None:
    """One CT Image Storage file with rescale and a soft-tissue window."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.InstanceNumber = f"BENCH{number:05d}", "CT", number
    ds.set_pixel_data(stored, "MONOCHROME2", 16)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if compressed:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)


def settle(files: list[Path]) -> float:
    """Sleep until every file's mtime and ctime are older than RECENT_S (+0.1 s); seconds slept.

    Only waits: timestamps are not faked (os.utime could backdate mtime but not ctime, which
    the memo's just-written guard also checks).
    """
    newest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in files) / 1e9
    wait = max(0.0, newest + RECENT_S + 0.1 - time.time())
    time.sleep(wait)
    return wait


def one_pass(files: list[Path], cache_dir: Path, size: int) -> float:
    """Seconds to load every file through the cache."""
    start = time.perf_counter()
    for path in files:
        load_image_cached(path, cache_dir=cache_dir, size=size, window=None, frame_policy="middle")
    return time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of files (default 200)")
    parser.add_argument("--size", type=int, default=224, help="output side (default 224)")
    parser.add_argument("--compressed", action="store_true", help="RLE Lossless instead of native")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; exit status 0 even below target (it is a report)."""
    args = parse_args(argv)
    print("$ python " + shlex.join(["bench/ingest.py", *(sys.argv[1:] if argv is None else argv)]))
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="fedclinic-bench-") as tmp:
        root = Path(tmp)
        files = [root / "dicom" / f"{i:05d}.dcm" for i in range(args.n)]
        files[0].parent.mkdir()
        for i, path in enumerate(files):
            write_slice(path, ct_slice(rng), i + 1, args.compressed)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        waited = settle(files)
        encoding = "RLE Lossless" if args.compressed else "explicit VR little endian"
        print(f"{args.n} files, {SIDE}x{SIDE} int16 CT, {encoding}, {megabytes:.1f} MB; "
              f"output {args.size}x{args.size} float32")
        print(f"waited {waited:.1f} s after writing so every file is > {RECENT_S:.0f} s old before "
              "the first pass (the hash memo skips files modified within that window)")
        cold = one_pass(files, root / "cache", args.size)
        warm = [one_pass(files, root / "cache", args.size) for _ in range(WARM_REPEATS)]
    first, hot = args.n / cold, args.n / statistics.median(warm)
    print(f"first pass (cold cache): {first:8.1f} images/s  ({cold * 1e3 / args.n:.2f} ms/image)")
    print(f"cached pass (median of {WARM_REPEATS}): {hot:8.1f} images/s  "
          f"({statistics.median(warm) * 1e3 / args.n:.2f} ms/image; runs "
          + ", ".join(f"{args.n / w:.0f}" for w in warm) + " images/s)")
    ratio = hot / first
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(f"ratio cached / first: {ratio:.1f}x ({verdict} target >= {TARGET_RATIO:.0f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
