"""The DICOM bomb corpus: small (or sparse) files that state, or inflate to, huge images, and the
files without a preamble; each entry says what loading it must give.

Every bomb is cheap to write (a few MB at most on disk; the large ones are sparse) and must be
quarantined before anything near its stated size is read, inflated, allocated or decoded
(client.site_data.imaging.limits). `reason` None means the file must load as an image.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

TOO_LARGE = "image too large"
GIB = 1 << 30


@dataclass(frozen=True)
class DicomInput:
    """One file: how to write it and what loading it must give."""

    name: str
    make: Callable[[Path], None]
    reason: str | None  # quarantine reason; None: loads as an image
    cached: bool = True  # False: the verdict comes from stat alone (no cache entry)


def header(rows: int, columns: int, syntax: str, *, samples: int = 1, bits: int = 8,
           frames: int | None = None, sop_class: str = CTImageStorage) -> Dataset:
    """An image header (no pixel data) with the given geometry and transfer syntax."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.PatientID, ds.Modality, ds.InstanceNumber = "BOMB", "CT", 1
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    return ds


def head_bytes(ds: Dataset, *, explicit: bool = True, preamble: bool = True) -> bytes:
    """Preamble, file meta and the dataset (without pixel data), as written to a file."""
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, not explicit
    write_dataset(body, ds)
    return (b"\0" * 128 + b"DICM" if preamble else b"") + meta.getvalue() + body.getvalue()


def item(length: int) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, length)


PIXEL_UNDEFINED = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def write_encapsulated(path: Path, ds: Dataset, fragments: list[bytes | int], bot: bytes = b"") -> None:
    """An encapsulated file; an int fragment is that many zero bytes, left sparse on disk."""
    with open(path, "wb") as fh:
        fh.write(head_bytes(ds) + PIXEL_UNDEFINED + item(len(bot)) + bot)
        for fragment in fragments:
            if isinstance(fragment, int):
                fh.write(item(fragment))
                fh.seek(fragment, io.SEEK_CUR)
            else:
                fh.write(item(len(fragment)) + fragment)
        fh.write(SEQUENCE_END)


def rle_segments(count: int, segment: bytes) -> bytes:
    """One RLE frame: the 64-byte header, then `count` copies of `segment`."""
    offsets = [64 + k * len(segment) for k in range(count)] + [0] * (15 - count)
    return struct.pack("<16L", count, *offsets) + segment * count


def rle_declared(samples: int) -> Callable[[Path], None]:
    """RLE Lossless, Rows = Columns = 65535, one 128-byte segment per sample (~1 KB)."""
    def make(path: Path) -> None:
        ds = header(65535, 65535, RLELossless, samples=samples)
        write_encapsulated(path, ds, [rle_segments(samples, bytes([0x81, 0]) * 64)])
    return make


def rle_really_encoded(path: Path) -> None:
    """RLE that really encodes 65535 x 65535 bytes (67 MB of replicate runs)."""
    ds = header(65535, 65535, RLELossless)
    runs = -(-65535 * 65535 // 128)
    write_encapsulated(path, ds, [rle_segments(1, bytes([0x81, 0]) * runs)])


def encapsulated_declared(syntax: str, codestream: bytes, rows: int = 65535, columns: int = 65535,
                          frames: int | None = None, bits: int = 8) -> Callable[[Path], None]:
    """An encapsulated file whose header declares rows x columns (x frames), one small frame."""
    def make(path: Path) -> None:
        write_encapsulated(path, header(rows, columns, syntax, frames=frames, bits=bits), [codestream])
    return make


def jpeg_codestream(rows: int, columns: int, components: int = 1, sof: int = 0xC0) -> bytes:
    """A JPEG (or JPEG-LS with sof=0xF7) codestream whose SOF states rows x columns; no real scan."""
    sof_segment = struct.pack(">BBHBHHB", 0xFF, sof, 8 + 3 * components, 8, rows, columns, components)
    sof_segment += b"".join(bytes([k + 1, 0x11, 0]) for k in range(components))
    return b"\xff\xd8" + sof_segment + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 32 + b"\xff\xd9"


def j2k_codestream(width: int, height: int, components: int = 1) -> bytes:
    """A JPEG 2000 codestream whose SIZ marker states width x height; no real tiles."""
    siz = struct.pack(">HHHLLLLLLLLH", 0xFF51, 38 + 3 * components, 0, width, height, 0, 0,
                      width, height, 0, 0, components) + bytes([7, 1, 1]) * components
    return b"\xff\x4f" + siz + b"\xff\xd9"


def coded_bomb(syntax: str, codestream: bytes) -> Callable[[Path], None]:
    """A 64 x 64 header whose single frame's codestream states a huge image."""
    return encapsulated_declared(syntax, codestream, rows=64, columns=64)


def deflated(path: Path, ds: Dataset, pixel_length: int, pixel_chunks: int, trailing: bytes = b"",
             pixel_value: bytes | None = None) -> None:
    """Deflated Explicit VR LE: the dataset, then a native pixel element of `pixel_length` bytes
    (zeros, compressed `pixel_chunks` MiB at a time, or `pixel_value`), then `trailing`."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    squeeze = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = [b"\0" * 128 + b"DICM" + meta.getvalue(),
           squeeze.compress(body.getvalue() + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, pixel_length))]
    if pixel_value is not None:
        out.append(squeeze.compress(pixel_value))
    else:
        zero = bytes(1 << 20)
        for _ in range(pixel_chunks):
            out.append(squeeze.compress(zero))
    out += [squeeze.compress(trailing), squeeze.flush()]
    path.write_bytes(b"".join(out))


def deflate_frame_bomb(path: Path) -> None:
    """~0.5 MB deflated, a native 8192 x 8192 16-bit image (128 MiB inflated)."""
    deflated(path, header(8192, 8192, ExplicitVRLittleEndian, bits=16), 8192 * 8192 * 2, 128)


def deflate_30000(path: Path) -> None:
    """The case's kind, a stated 30000 x 30000 16-bit image; only 16 MiB of it written (the
    header alone must refuse it)."""
    deflated(path, header(30000, 30000, ExplicitVRLittleEndian, bits=16), 30000 * 30000 * 2, 16)


def deflate_header_bomb(path: Path) -> None:
    """~0.3 MB deflated: a 64 MiB private element of zeros before a small image's pixel data."""
    ds = header(64, 64, ExplicitVRLittleEndian, bits=16)
    ds.add_new(0x00090010, "LO", "BOMB")  # private creator of the huge (0009,1010) below
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    squeeze = zlib.compressobj(1, zlib.DEFLATED, -15)
    huge = 64 << 20
    out = [b"\0" * 128 + b"DICM" + meta.getvalue(), squeeze.compress(body.getvalue()),
           squeeze.compress(struct.pack("<HH2sHL", 0x0009, 0x1010, b"OB", 0, huge))]
    zero = bytes(1 << 20)
    out += [squeeze.compress(zero) for _ in range(huge >> 20)]
    out.append(squeeze.compress(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 64 * 64 * 2)
                                + bytes(64 * 64 * 2)))
    out.append(squeeze.flush())
    path.write_bytes(b"".join(out))


def deflate_trailing_bomb(path: Path) -> None:
    """A valid 64 x 64 deflated image followed by 64 MiB of inflatable zeros: loads (nothing
    past the pixel data is inflated)."""
    values = (np.arange(64 * 64, dtype="<u2") % 1000).tobytes()
    ds = header(64, 64, ExplicitVRLittleEndian, bits=16)
    deflated(path, ds, len(values), 0, trailing=bytes(64 << 20), pixel_value=values)


def sparse_2gib(path: Path) -> None:
    """2 GiB sparse file (no disk blocks)."""
    with open(path, "wb") as fh:
        fh.truncate(2 * GIB)


def native_sparse(rows: int, columns: int, *, bits: int = 8, frames: int | None = None,
                  bits_allocated: int | None = None) -> Callable[[Path], None]:
    """A native image whose pixel data is all there but sparse on disk (zeros)."""
    def make(path: Path) -> None:
        ds = header(rows, columns, ExplicitVRLittleEndian, bits=bits, frames=frames)
        if bits_allocated is not None:
            ds.BitsAllocated = bits_allocated
        length = rows * columns * bits * (frames or 1) // 8
        length += length % 2
        with open(path, "wb") as fh:
            fh.write(head_bytes(ds) + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, length))
            fh.truncate(fh.tell() + length)
    return make


def native_short(rows: int, columns: int, *, frames: int, bits: int = 16, bits_allocated: int | None = None,
                 data_bytes: int | None = None) -> Callable[[Path], None]:
    """A native header stating a huge image with one small frame of data (README's native kind)."""
    def make(path: Path) -> None:
        ds = header(rows, columns, ExplicitVRLittleEndian, bits=bits, frames=frames)
        if bits_allocated is not None:
            ds.BitsAllocated = bits_allocated
        data = bytes(rows * columns * bits // 8 if data_bytes is None else data_bytes)
        path.write_bytes(head_bytes(ds) + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, len(data)) + data)
    return make


def header_bomb(path: Path) -> None:
    """8 MB: an undefined-length sequence of 1,000,000 empty items before a small image (pydicom
    would hold it as ~700 MB of Dataset objects)."""
    ds = header(64, 64, ExplicitVRLittleEndian)
    items = struct.pack("<HH2sHL", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF) + item(0) * 1_000_000 + SEQUENCE_END
    head = head_bytes(ds)
    # the sequence (0008,1115) goes after (0008,0060) Modality and before (0010,0020): splice it
    # in before the first group-0010 element written
    at = head.index(struct.pack("<HH", 0x0010, 0x0020))
    data = bytes(64 * 64)
    pixels = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, len(data)) + data
    path.write_bytes(head[:at] + items + head[at:] + pixels)


def fragment_bomb(path: Path) -> None:
    """A 64 x 64 RLE header whose one fragment is 100 MiB (sparse)."""
    write_encapsulated(path, header(64, 64, RLELossless), [100 << 20])


def fragment_count_bomb(path: Path) -> None:
    """300,000 empty fragments (2.4 MB) for a 2-frame RLE image."""
    write_encapsulated(path, header(64, 64, RLELossless, frames=2), [b""] * 300_000)


def multi_frame_native(path: Path) -> None:
    """100 frames of 1024 x 1024 16-bit (200 MB, sparse): loads, one frame read."""
    native_sparse(1024, 1024, bits=16, frames=100)(path)


def preambleless(kind: str) -> Callable[[Path], None]:
    """A CT image (or an SR) written, then cut: "dicm" keeps the "DICM" prefix, "meta" starts
    at the file meta group, "bare" is a bare implicit VR little endian dataset."""
    def make(path: Path) -> None:
        whole = small_ct_bytes() if not kind.startswith("sr") else small_sr_bytes()
        if kind.endswith("dicm"):
            path.write_bytes(whole[128:])
        elif kind.endswith("meta"):
            path.write_bytes(whole[132:])
        else:
            ds = small_ct() if not kind.startswith("sr") else small_sr()
            body = DicomBytesIO()
            body.is_little_endian, body.is_implicit_VR = True, True
            write_dataset(body, ds)
            path.write_bytes(body.getvalue())
    return make


def small_ct() -> Dataset:
    ds = header(32, 32, ExplicitVRLittleEndian, bits=16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
    values = np.random.default_rng(5).integers(-1000, 1500, size=(32, 32)).astype(np.int16)
    ds.PixelData = values.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    return ds


def small_sr() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.PatientID, ds.Modality = "SR", "SR"
    return ds


def _file_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def small_ct_bytes() -> bytes:
    return _file_bytes(small_ct())


def small_sr_bytes() -> bytes:
    return _file_bytes(small_sr())


def big_sr(path: Path) -> None:
    """An SR without preamble whose content sequence (8 MB) is over the header cap: still named
    as the non-image object it is."""
    text = struct.pack("<HH2sHL", 0x0040, 0xA160, b"UT", 0, 60) + b"x" * 60
    content = (struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
               + (item(len(text)) + text) * 100_000 + SEQUENCE_END)
    path.write_bytes(small_sr_bytes()[132:] + content)


PALETTE_COLOUR = "palette colour image"
LUT_DESCRIPTOR_TAGS = {"Red": 0x00281101, "Green": 0x00281102, "Blue": 0x00281103}
SEGMENTED_LUT_TAGS = {"Red": 0x00281221, "Green": 0x00281222, "Blue": 0x00281223}


def segmented_palette(words: list[int], entries: int = 0, rows: int = 64) -> Dataset:
    """A rows x rows PALETTE COLOR image (pixels 0) whose three Segmented Palette Color LUTs are
    the 16-bit `words` (PS3.3 C.7.9.2), with a descriptor of `entries` (0: 65536) from 0."""
    ds = header(rows, rows, ExplicitVRLittleEndian)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.PixelData = bytes(rows * rows)
    data = struct.pack(f"<{len(words)}H", *words)
    for colour in ("Red", "Green", "Blue"):
        ds.add_new(LUT_DESCRIPTOR_TAGS[colour], "US", [entries, 0, 16])
        ds.add_new(SEGMENTED_LUT_TAGS[colour], "OW", data)
    return ds


def segmented_palette_bomb(segments: int) -> Callable[[Path], None]:
    """A 64 x 64 palette image whose segmented LUTs are one discrete entry then `segments` linear
    segments of 65,535 entries each (3 words each): 20,000 of them make a 365 KB file that
    pydicom's apply_color_lut expands to 1.3e9 Python ints per channel."""
    def make(path: Path) -> None:
        ds = segmented_palette([0, 1, 0] + [1, 65535, 0] * segments)
        path.write_bytes(head_bytes(ds))  # pixel data included
    return make


BOMBS: tuple[DicomInput, ...] = (
    DicomInput("rle_mono_65535", rle_declared(1), TOO_LARGE),
    DicomInput("rle_rgb_65535", rle_declared(3), TOO_LARGE),
    DicomInput("rle_really_encoded_65535", rle_really_encoded, TOO_LARGE),
    DicomInput("jpeg_declared_65535", encapsulated_declared(JPEGBaseline8Bit, jpeg_codestream(64, 64)),
               TOO_LARGE),
    DicomInput("jpegls_declared_65535",
               encapsulated_declared(JPEGLSLossless, jpeg_codestream(64, 64, sof=0xF7)), TOO_LARGE),
    DicomInput("j2k_declared_65535", encapsulated_declared(JPEG2000Lossless, j2k_codestream(64, 64)),
               TOO_LARGE),
    DicomInput("jpeg_coded_65535", coded_bomb(JPEGBaseline8Bit, jpeg_codestream(65535, 65535, 3)), TOO_LARGE),
    DicomInput("jpegls_coded_65535", coded_bomb(JPEGLSLossless, jpeg_codestream(65535, 65535, sof=0xF7)),
               TOO_LARGE),
    DicomInput("j2k_coded_60000", coded_bomb(JPEG2000Lossless, j2k_codestream(60000, 60000)), TOO_LARGE),
    DicomInput("rle_frames_1e6", encapsulated_declared(RLELossless, rle_segments(1, bytes([0x81, 0]) * 2048),
                                                       rows=512, columns=512, frames=1_000_000), TOO_LARGE),
    DicomInput("native_frames_1e5", native_short(512, 512, frames=100_000), TOO_LARGE),
    DicomInput("bits_allocated_65535", native_short(4096, 4096, frames=1, bits=8, bits_allocated=65535,
                                                                  data_bytes=1024), TOO_LARGE),
    DicomInput("native_20000_sparse", native_sparse(20000, 20000), TOO_LARGE),
    DicomInput("deflate_8192", deflate_frame_bomb, TOO_LARGE),
    DicomInput("deflate_30000", deflate_30000, TOO_LARGE),
    DicomInput("deflate_header_64mib", deflate_header_bomb, TOO_LARGE),
    DicomInput("sparse_2gib", sparse_2gib, TOO_LARGE, cached=False),
    DicomInput("header_1e6_items", header_bomb, TOO_LARGE),
    DicomInput("fragment_100mib", fragment_bomb, TOO_LARGE),
    DicomInput("fragments_300000", fragment_count_bomb, TOO_LARGE),
    DicomInput("palette_segmented_20000", segmented_palette_bomb(20_000), PALETTE_COLOUR),
)

# Files that must still load (or get their own reason) within the same bounded memory.
WELL_FORMED: tuple[DicomInput, ...] = (
    DicomInput("deflate_trailing_64mib", deflate_trailing_bomb, None),
    DicomInput("native_100_frames_sparse", multi_frame_native, None),
    DicomInput("ct_no_preamble_dicm", preambleless("ct_dicm"), None),
    DicomInput("ct_no_preamble_meta", preambleless("ct_meta"), None),
    DicomInput("ct_bare_implicit", preambleless("ct_bare"), None),
    DicomInput("sr_no_preamble_meta", preambleless("sr_meta"), "non-image object: Basic Text SR Storage"),
    DicomInput("sr_bare_implicit", preambleless("sr_bare"), "non-image object: Basic Text SR Storage"),
    DicomInput("sr_no_preamble_6mb", big_sr, "non-image object: Basic Text SR Storage"),
)

ALL = BOMBS + WELL_FORMED
