"""One open DICOM file -> its header and its frames, one at a time, within bounded memory.

Nothing here reads more than the caps of client.site_data.imaging.limits allow, and every cap is
checked from a stated size before the bytes it bounds are read:

DICOM or not: a Part 10 file (128-byte preamble + "DICM") is read as such. A file without the
    preamble is read too when it starts the way DCMTK recognises one: "DICM" and the file meta
    group, or a first element of group 0002 (file meta) or 0008 (a bare dataset, little or big
    endian). Anything else is "not a DICOM file". A bare dataset has no transfer syntax: native
    pixel data is read in the encoding the parser detects (implicit/explicit VR, endianness);
    a file meta group without a transfer syntax stays "missing transfer syntax".
Header: parsed by pydicom up to the pixel data, reading at most limits.max_header_bytes;
    elements over DEFER_BYTES (1 MiB) are skipped, not read. Over the cap: "image too large",
    unless the SOP class (read again, up to (0008,0016) only) names a non-image object.
Deflated Explicit VR Little Endian: inflated in chunks of at most CHUNK bytes through a
    zlib decompressobj (max_length), never to more than the header cap while parsing, then
    never past the end of the declared pixel data; bytes before the frame being read are
    dropped. An inflated stream longer than allowed is "image too large".
Native pixel data: frame i is read by pydicom from the file at its offset (one frame's bytes).
Encapsulated pixel data: the items are walked by their 8-byte headers (at most MAX_FRAGMENTS;
    values are skipped, not read) to find frame i's fragments by the Extended Offset Table,
    the Basic Offset Table, one fragment per frame, or JPEG EOI markers (as pydicom does); their
    total length is capped by limits.max_frame_bytes before they are read, and the image size
    in the JPEG SOF / JPEG 2000 SIZ marker by limits.max_frame_samples before it is decoded.
Decoding: pydicom's decoder with whichever permissive plugins are installed, one frame at a
    time. Warnings and logged tracebacks of pydicom and its plugins go to this module's logger
    at DEBUG ("fedclinic.site.dicom"), never to the console (`quiet_decoding`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from client.site_data.imaging.limits import DEFER_BYTES, MAX_HEADER_ITEMS, DicomLimits
from client.site_data.imaging.reasons import (
    CORRUPT,
    NOT_DICOM,
    TOO_LARGE,
    UNDECODABLE,
    UnusableImage,
    is_known_non_image_class,
    no_decoder,
    non_image,
)

log = logging.getLogger("fedclinic.site.dicom")

PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
PIXEL_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN")
SOP_CLASS_TAG = 0x00080016
ITEM, SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")  # little, big endian
UNDEFINED_LENGTH = 0xFFFFFFFF
CHUNK = 1 << 20  # bytes inflated (or read) at a time
MAX_FRAGMENTS = 1 << 18  # encapsulated items walked (~1 s); more is "image too large"
# First element groups that mark a file without preamble as DICOM (read little endian): file
# meta (0002), a bare dataset (0008), a bare big-endian dataset (0008 read as 0x0800).
BARE_GROUPS = (0x0002, 0x0008, 0x0800)
J2K_SYNTAXES = frozenset(JPEG2000TransferSyntaxes) | {
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}  # HTJ2K
JPEG_SYNTAXES = frozenset(JPEGTransferSyntaxes) | frozenset(JPEGLSTransferSyntaxes)
# Start-of-frame markers: JPEG SOF0-3, 5-7, 9-11, 13-15 and JPEG-LS SOF55.
SOF_MARKERS = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                         *range(0xCD, 0xD0), 0xF7])


class _HeaderCap(Exception):
    """The header parser asked for more than limits.max_header_bytes, or MAX_HEADER_ITEMS items."""


class _Capped:
    """Counts what the header parser reads: bytes, and sequence items (pydicom holds each item
    as a Dataset of ~700 bytes, so an 8-byte empty item is the costliest header byte).

    `capped` stays set once a cap was hit: pydicom turns some exceptions into others.
    """

    def __init__(self, budget: int) -> None:
        self.budget, self.used, self.items, self.capped = budget, 0, 0, False

    def _refuse(self) -> None:
        self.capped = True
        raise _HeaderCap

    def _count(self, size: int, data: bytes) -> None:
        self.used += len(data)
        if size == 8 and data[:4] in ITEM_TAGS:
            self.items += 1
            if self.items > MAX_HEADER_ITEMS:
                self._refuse()


class _Window(_Capped):
    """A read-only view of `raw` from byte `start` on that reads at most `budget` bytes in all
    (seeking past bytes, as the parser does over a deferred element, does not count)."""

    def __init__(self, raw: BinaryIO, start: int, budget: int) -> None:
        super().__init__(budget)
        self._raw, self._start = raw, start
        raw.seek(start)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or self.used + size > self.budget:
            self._refuse()
        data = self._raw.read(size)
        self._count(size, data)  # type: ignore[arg-type]
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            offset += self._start
        return self._raw.seek(offset, whence) - self._start

    def tell(self) -> int:
        return self._raw.tell() - self._start


class _Inflated(_Capped):
    """The inflated body of a Deflated Explicit VR Little Endian file, inflated on demand.

    Positions are offsets into the inflated stream. Data from `base` on is kept in memory;
    `forward_only()` then drops everything before each read, so reading frames in order keeps
    one frame. A read that needs more than `limit` inflated bytes in all raises _HeaderCap
    (while parsing the header) or "image too large" (pixel data).
    """

    def __init__(self, raw: BinaryIO, start: int, limit: int) -> None:
        super().__init__(limit)
        raw.seek(start)
        self._raw, self._z = raw, zlib.decompressobj(-zlib.MAX_WBITS)
        self._data, self._base, self._pos, self._done = bytearray(), 0, 0, False
        self.limit, self._header = limit, True

    def forward_only(self, limit: int) -> None:
        self._header, self.limit = False, limit

    def _more(self) -> bytes:
        """The next inflated chunk (at most CHUNK bytes), b"" at the end of the stream."""
        while not self._done:
            if self._z.unconsumed_tail:
                out = self._z.decompress(self._z.unconsumed_tail, CHUNK)
            elif self._z.eof:
                self._done = True
                break
            else:
                packed = self._raw.read(CHUNK)
                out = self._z.decompress(packed, CHUNK) if packed else self._z.flush()
                self._done = not packed
            if out:
                return out
        return b""

    def _fill(self, end: int) -> None:
        """Inflate until `end` bytes are available (or the stream ends); beyond `limit`: too large."""
        if end > self.limit and self._base + len(self._data) < end:
            if self._header:
                self._refuse()
            raise UnusableImage(TOO_LARGE)
        while self._base + len(self._data) < end:
            try:
                chunk = self._more()
            except zlib.error:
                raise UnusableImage(CORRUPT) from None
            if not chunk:
                return
            if not self._header and self._base + len(self._data) + len(chunk) <= self._pos:
                self._base += len(self._data) + len(chunk)  # wholly before the read: dropped
                self._data = bytearray()
                continue
            self._data += chunk

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.limit + 1 - self._pos)
        if self._pos < self._base:
            raise UnusableImage(CORRUPT)  # pixel data is read in order: never so in a valid file
        if not self._header:  # nothing before the read position is needed again
            drop = min(self._pos - self._base, len(self._data))
            del self._data[:drop]
            self._base += drop
        self._fill(self._pos + size)
        start = self._pos - self._base
        out = bytes(self._data[start:start + size])
        self._pos += len(out)
        if self._header:
            self._count(size, out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            raise io.UnsupportedOperation("an inflating stream has no known end")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos


class _ToDebug(logging.Handler):
    """Re-logs a record (with its traceback) on this module's logger at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("%s: %s", record.name, record.getMessage(), exc_info=record.exc_info)


QUIET_LOGGERS = ("pydicom", "pylibjpeg", "openjpeg", "rle", "jpeg_ls", "gdcm")


@contextlib.contextmanager
def quiet_decoding() -> Iterator[None]:
    """pydicom's (and its plugins') warnings and log records, their children's included (e.g.
    "pydicom.pixels.decoders.base" logging a plugin's traceback at ERROR), go to this module's
    logger at DEBUG instead of propagating to whatever console handler the root logger has."""
    handler = _ToDebug()
    saved = []
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
        for warning in caught:
            log.debug("warning while reading DICOM: %s", warning.message)


@dataclass
class PixelSource:
    """A parsed header and where its pixel data lies; `frame(i, n)` decodes one frame."""

    ds: Dataset
    limits: DicomLimits
    stream: BinaryIO | None = None  # the file (or its inflated body); None without pixel data
    keyword: str | None = None  # PixelData / FloatPixelData / DoubleFloatPixelData
    vr: str | None = None
    value_offset: int = 0  # of the pixel data value in `stream`
    length: int = 0  # of the pixel data value (UNDEFINED_LENGTH: encapsulated)
    available: int | None = None  # bytes in `stream`; None for an inflated stream
    _fragments: tuple[array, array] | None = None  # encapsulated: each fragment's data offset, length
    _eoi_frames: array | None = None  # first fragment of each frame, found by JPEG EOI markers

    @property
    def transfer_syntax(self) -> UID:
        return UID(self.ds.file_meta.TransferSyntaxUID)

    @property
    def deflated(self) -> bool:
        return isinstance(self.stream, _Inflated)

    def frame(self, index: int, frames: int) -> tuple[np.ndarray, str]:
        """Frame `index` of `frames` as pydicom decodes it, and its photometric interpretation.

        Frames must be asked for in increasing order (a deflated stream is not re-read).
        """
        syntax = self.transfer_syntax
        decode_as = ExplicitVRLittleEndian if self.deflated else syntax
        try:
            decoder = get_decoder(decode_as)
        except NotImplementedError:
            raise UnusableImage(no_decoder(syntax)) from None
        if not decoder.is_available:
            raise UnusableImage(no_decoder(syntax))
        opts = as_pixel_options(self.ds.group_dataset(0x0028), transfer_syntax_uid=decode_as)
        assert self.stream is not None
        src: BinaryIO | bytes
        if syntax.is_encapsulated:
            src = encapsulate([self._encoded_frame(index, frames)])
            opts["number_of_frames"], index = 1, 0
        else:
            opts.update(pixel_keyword=self.keyword, number_of_frames=frames)
            if self.vr:
                opts["pixel_vr"] = self.vr
            if isinstance(self.stream, _Inflated):
                self.stream.forward_only(self.value_offset + self.length + 1)
            self.stream.seek(self.value_offset)
            src = self.stream
        try:
            arr, meta = decoder.as_array(src, index=index, as_rgb=True, **opts)
        except UnusableImage:
            raise
        except Exception:  # noqa: BLE001 - plugins raise anything; one file must not crash a site
            log.debug("decoding frame %d failed", index, exc_info=True)
            raise UnusableImage(UNDECODABLE) from None
        return arr, str(meta.get("photometric_interpretation", self.ds.PhotometricInterpretation))

    # -- encapsulated pixel data: items walked by their headers, values read for one frame ----

    def _item(self, at: int) -> tuple[tuple[int, int], int]:
        assert self.stream is not None
        self.stream.seek(at)
        header = self.stream.read(8)
        if len(header) < 8:
            return SEQUENCE_END, 0  # a missing sequence delimiter ends the data, as in pydicom
        group, element, length = struct.unpack("<HHL", header)
        return (group, element), length

    def _walk(self) -> tuple[array, array]:
        """Offsets of every fragment's data and their lengths (the Basic Offset Table skipped)."""
        if self._fragments is not None:
            return self._fragments
        tag, bot_length = self._item(self.value_offset)
        if tag != ITEM or bot_length == UNDEFINED_LENGTH or bot_length % 4:
            raise UnusableImage(CORRUPT)
        starts, lengths = array("q"), array("q")
        at = self.value_offset + 8 + bot_length
        end = self.available if self.available is not None else 1 << 62
        while True:
            tag, length = self._item(at)
            if tag == SEQUENCE_END:
                break
            if tag != ITEM or length == UNDEFINED_LENGTH or at + 8 + length > end:
                raise UnusableImage(CORRUPT)
            if len(starts) >= MAX_FRAGMENTS:
                raise UnusableImage(TOO_LARGE)
            starts.append(at + 8)
            lengths.append(length)
            at += 8 + length
        if not starts:
            raise UnusableImage(CORRUPT)
        self._fragments = (starts, lengths)
        return self._fragments

    def _basic_offsets(self, index: int) -> tuple[int, int | None] | None:
        """(start, end or None for the last frame) of frame `index` from the Basic Offset Table
        (relative to the first fragment's item), None when the table is empty."""
        assert self.stream is not None
        _, bot_length = self._item(self.value_offset)
        if bot_length == 0:
            return None
        if 4 * index + 4 > bot_length:
            raise UnusableImage(CORRUPT)
        self.stream.seek(self.value_offset + 8 + 4 * index)
        pair = self.stream.read(8 if 4 * index + 8 <= bot_length else 4)
        values = struct.unpack(f"<{len(pair) // 4}L", pair)
        return values[0], (values[1] if len(values) > 1 else None)

    def _extended_offsets(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The Extended Offset Table (offsets, lengths), None when absent."""
        found = [self.ds.get_item(tag) for tag in (0x7FE00001, 0x7FE00002)]
        if any(e is None or not isinstance(e.value, bytes | bytearray) for e in found):
            return None
        return tuple(struct.unpack(f"<{len(e.value) // 8}Q", e.value[:len(e.value) // 8 * 8])
                     for e in found)  # type: ignore[return-value]

    def _span(self, index: int, frames: int) -> tuple[int, int, int | None]:
        """Fragments [first, stop) holding frame `index`, and its length where a table states it."""
        starts, _ = self._walk()
        count, first_item = len(starts), starts[0] - 8
        table = self._extended_offsets()
        if table is not None:
            offsets, lengths = table
            if index >= min(len(offsets), len(lengths)):
                raise UnusableImage(CORRUPT)
            k = bisect_left(starts, first_item + offsets[index] + 8)
            if k == count or starts[k] != first_item + offsets[index] + 8:
                raise UnusableImage(CORRUPT)
            return k, k + 1, lengths[index]
        bot = self._basic_offsets(index)
        if bot is not None:
            low = bisect_left(starts, first_item + bot[0] + 8)
            high = count if bot[1] is None else bisect_left(starts, first_item + bot[1] + 8)
            return low, high, None
        if count == frames:
            return index, index + 1, None
        if frames == 1 or count == 1:
            if index:
                raise UnusableImage(CORRUPT)
            return 0, count, None
        return self._by_eoi(index)

    def _by_eoi(self, index: int) -> tuple[int, int, None]:
        """Frames spread over fragments without an offset table: a frame ends at a JPEG EOI."""
        starts, lengths = self._walk()
        if self._eoi_frames is None:
            assert self.stream is not None
            firsts, frame_start = array("q"), 0
            for k in range(len(starts)):
                tail = min(10, lengths[k])
                self.stream.seek(starts[k] + lengths[k] - tail)
                if b"\xff\xd9" in self.stream.read(tail):
                    firsts.append(frame_start)
                    frame_start = k + 1
            if frame_start < len(starts):
                firsts.append(frame_start)  # the last frame lacks its EOI (pydicom warns, reads it)
            firsts.append(len(starts))
            self._eoi_frames = firsts
        if index + 1 >= len(self._eoi_frames):
            raise UnusableImage(CORRUPT)
        return self._eoi_frames[index], self._eoi_frames[index + 1], None

    def _encoded_frame(self, index: int, frames: int) -> bytes:
        """Frame `index`'s encoded bytes, once their length and coded image size are in bounds."""
        assert self.stream is not None
        starts, lengths = self._walk()
        first, stop, stated = self._span(index, frames)
        total = sum(lengths[first:stop]) if stated is None else stated
        if stop <= first:
            raise UnusableImage(CORRUPT)
        if total > self.limits.max_frame_bytes:
            raise UnusableImage(TOO_LARGE)
        parts = []
        for k in range(first, stop):
            self.stream.seek(starts[k])
            parts.append(self.stream.read(min(lengths[k], total)))
        encoded = b"".join(parts)[:total]
        self._check_coded_size(encoded)
        return encoded

    def _check_coded_size(self, encoded: bytes) -> None:
        """The image size a JPEG / JPEG-LS / JPEG 2000 codestream states, against the cap: the
        codec sizes its output from the codestream, not from the DICOM header."""
        syntax = self.transfer_syntax
        if syntax in J2K_SYNTAXES:
            samples = j2k_samples(encoded)
        elif syntax in JPEG_SYNTAXES:
            samples = jpeg_samples(encoded)
        else:
            return  # RLE: decoded into a buffer sized from the (checked) header
        if samples is None:
            raise UnusableImage(UNDECODABLE)
        if samples > self.limits.max_frame_samples:
            raise UnusableImage(TOO_LARGE)


def jpeg_samples(codestream: bytes) -> int | None:
    """Rows x columns x components from a JPEG or JPEG-LS SOF marker; None if there is none."""
    at = codestream.find(b"\xff\xd8")
    if at < 0:
        return None
    at += 2
    while at + 4 <= len(codestream):
        if codestream[at] != 0xFF:
            return None
        marker = codestream[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = int.from_bytes(codestream[at + 2:at + 4], "big")
        if marker in SOF_MARKERS:
            if at + 10 > len(codestream):
                return None
            rows = int.from_bytes(codestream[at + 5:at + 7], "big")
            columns = int.from_bytes(codestream[at + 7:at + 9], "big")
            return max(rows, 1) * max(columns, 1) * max(codestream[at + 9], 1)
        if marker == 0xDA or length < 2:  # scan data before any SOF: no valid codestream
            return None
        at += 2 + length
    return None


def j2k_samples(codestream: bytes) -> int | None:
    """Width x height x components from a JPEG 2000 SIZ marker (raw codestream or JP2)."""
    at = codestream.find(b"\xff\x4f\xff\x51")
    if at < 0 or at + 42 > len(codestream):
        return None
    x, y, x0, y0 = struct.unpack(">4L", codestream[at + 8:at + 24])
    components = int.from_bytes(codestream[at + 40:at + 42], "big")
    return max(x - x0, 0) * max(y - y0, 0) * components


def _dicom_start(raw: BinaryIO) -> int | None:
    """Offset the DICOM data starts at (0 with a preamble), None when it is not DICOM."""
    raw.seek(0)
    head = raw.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return 0
    start = 4 if head[:4] == b"DICM" else 0  # preamble cut off, "DICM" prefix kept
    if len(head) < start + 8:
        return None
    group = struct.unpack("<H", head[start:start + 2])[0]
    return start if group in BARE_GROUPS else None


def _bare_syntax(ds: Dataset, encapsulated: bool) -> UID | None:
    """The transfer syntax of a dataset without file meta, from the encoding the parser found."""
    implicit, little = ds.original_encoding[:2]
    if encapsulated or implicit is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian if little else None
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _past_sop_class(tag: int, vr: str | None, length: int) -> bool:
    return tag > SOP_CLASS_TAG


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in PIXEL_TAGS


def _parse(stream: BinaryIO, deflated: bool, meta: FileMetaDataset,
           stop_when: Callable[[int, str | None, int], bool]) -> Dataset:
    if not deflated:
        return read_partial(stream, stop_when=stop_when, defer_size=DEFER_BYTES, force=True)
    ds = read_dataset(stream, False, True, stop_when=stop_when, defer_size=DEFER_BYTES)
    ds.file_meta = meta
    ds.set_original_encoding(False, True, ds._character_set)
    return ds


def _drop_deferred(ds: Dataset) -> None:
    """Remove elements the parser skipped (over DEFER_BYTES), so that nothing reads them later;
    an image attribute that large (a LUT, a palette) is then simply missing."""
    for tag in list(ds.keys()):
        element = ds.get_item(tag)
        if isinstance(element, RawDataElement):
            if element.value is None and element.length:
                del ds[tag]
        elif element is not None and element.VR == "SQ" and isinstance(element.value, Sequence):
            for item in element.value:
                _drop_deferred(item)


def _pixel_header(stream: BinaryIO, little: bool) -> tuple[str, str | None, int, int] | None:
    """(keyword, VR, length, header bytes) of the pixel data element the stream is at, None if
    there is none. Explicit or implicit VR is told by the bytes, as pydicom does (some files
    are encoded otherwise than their transfer syntax says)."""
    end = "<" if little else ">"
    tag = stream.read(4)
    if len(tag) < 4:
        return None
    group, element = struct.unpack(f"{end}HH", tag)
    keyword = PIXEL_TAGS.get(group << 16 | element)
    if keyword is None:
        return None
    rest = stream.read(8)
    if len(rest) >= 8 and rest[:2] in PIXEL_VRS:
        return keyword, rest[:2].decode("ascii"), struct.unpack(f"{end}L", rest[4:8])[0], 12
    if len(rest) < 4:
        raise UnusableImage(CORRUPT)
    return keyword, None, struct.unpack(f"{end}L", rest[:4])[0], 8


def open_source(raw: BinaryIO, file_size: int, limits: DicomLimits) -> PixelSource:
    """Parse the header of the open DICOM file `raw` (`file_size` bytes) within `limits`.

    Raises UnusableImage: "not a DICOM file", "truncated or corrupt file", "image too large", or
    the non-image reason of a non-image object whose header is over the cap. Call within
    `quiet_decoding()`.
    """
    start = _dicom_start(raw)
    if start is None:
        raise UnusableImage(NOT_DICOM)
    try:
        probe = _Window(raw, start, limits.max_header_bytes)
        read_preamble(probe, force=True)  # type: ignore[arg-type]
        meta = _read_file_meta_info(probe)  # type: ignore[arg-type]
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        body_start = start + probe.tell()

        def fresh() -> BinaryIO:
            if deflated:
                return _Inflated(raw, body_start, limits.max_header_bytes)  # type: ignore[return-value]
            return _Window(raw, start, limits.max_header_bytes)  # type: ignore[return-value]

        stream = fresh()
        try:
            ds = _parse(stream, deflated, meta, _at_pixels)
        except Exception:
            if not stream.capped:  # type: ignore[attr-defined]
                raise
            sop_class = None
            with contextlib.suppress(Exception):
                sop_class = _parse(fresh(), deflated, meta, _past_sop_class).get("SOPClassUID")
            sop_class = sop_class or meta.get("MediaStorageSOPClassUID")
            if sop_class and is_known_non_image_class(sop_class):
                raise UnusableImage(non_image(sop_class)) from None
            raise UnusableImage(TOO_LARGE) from None
        position = stream.tell()
        little = ds.original_encoding[1]
        if deflated:
            stream.forward_only(position + 16)  # type: ignore[attr-defined]
            body: BinaryIO = stream
            available = None
        else:
            if start + position > file_size:
                raise UnusableImage(CORRUPT)  # a skipped element ran past the end of the file
            body, available = raw, file_size
            position += start
            raw.seek(position)
        pixel = _pixel_header(body, little is not False)
    except _HeaderCap:
        raise UnusableImage(TOO_LARGE) from None
    except UnusableImage:
        raise
    except Exception:  # noqa: BLE001 - the parser raises many types on damaged bytes
        raise UnusableImage(CORRUPT) from None
    _drop_deferred(ds)
    if pixel is None:
        return PixelSource(ds, limits)
    keyword, vr, length, header_bytes = pixel
    if len(getattr(ds, "file_meta", ())) == 0:  # a bare dataset: no file meta at all
        bare = _bare_syntax(ds, length == UNDEFINED_LENGTH)
        if bare is not None:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = bare
    value_offset = position + header_bytes
    return PixelSource(ds, limits, body, keyword, vr, value_offset, length, available)
