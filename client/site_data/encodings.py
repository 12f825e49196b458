"""Which text encoding a CSV or JSON Lines export is in, and its lines as text.

Decoded: UTF-8 with or without a byte-order mark (BOM), UTF-16 and UTF-32 with a BOM, and UTF-16
or UTF-32 without one when the NUL bytes of mostly-ASCII text give it away. These are lossless
Unicode encodings, so nothing is guessed.
Refused, with a message that names the encoding and says to export as UTF-8: a ZIP (Excel)
file, and a file whose non-ASCII text is mostly not UTF-8 (Windows-1252 / Latin-1: decoding it
as one 8-bit code page or another would be a guess that silently changes text).
A few undecodable bytes in an otherwise UTF-8 file become U+FFFD, and the rows holding them are
counted by the caller (`tables.undecodable`).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from client.site_data.errors import SiteDataError

REPLACEMENT = "\ufffd"
SNIFF_BYTES = 4096
# Longest first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_ZIP = b"PK\x03\x04"


def _nul_share(sample: bytes, start: int, step: int) -> float:
    part = sample[start::step]
    return part.count(0) / len(part) if part else 0.0


def sniff(path: Path, head: bytes) -> str:
    """The Python codec for a file that starts with `head` (its first SNIFF_BYTES bytes).

    Raises SiteDataError for a ZIP container (an .xlsx saved under a .csv name).
    """
    if head.startswith(_ZIP):
        raise SiteDataError(f"{path.name}: is a ZIP or Excel workbook, not text; save it as 'CSV UTF-8'")
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    sample = head[: len(head) // 4 * 4]
    if sample.count(0) * 8 < len(sample):  # under 1/8 NUL: not UTF-16/32 text (a stray NUL stays data)
        return "utf-8"
    quarters = [_nul_share(sample, k, 4) for k in range(4)]
    if quarters[0] < 0.5 and min(quarters[1:]) > 0.9:
        return "utf-32-le"
    if quarters[3] < 0.5 and min(quarters[:3]) > 0.9:
        return "utf-32-be"
    even, odd = _nul_share(sample, 0, 2), _nul_share(sample, 1, 2)
    if odd > 0.4 and even < 0.1:
        return "utf-16-le"
    if even > 0.4 and odd < 0.1:
        return "utf-16-be"
    return "utf-8"


def open_text(path: Path) -> tuple[IO[str], str]:
    """The file as a text stream whose lines end at LF, CR or CRLF (kept), and the codec used."""
    with path.open("rb") as raw:
        head = raw.read(SNIFF_BYTES)
    codec = sniff(path, head)
    return io.TextIOWrapper(path.open("rb"), encoding=codec, errors="replace", newline=""), codec


class Utf8Tally:
    """Lines of a UTF-8 stream, counting those with undecodable bytes and those with valid non-ASCII text."""

    def __init__(self, lines: IO[str], codec: str) -> None:
        self._lines = lines
        self.utf8 = codec.startswith("utf-8")
        self.lines = self.broken = self.valid_non_ascii = 0

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            self.lines += 1
            if self.utf8 and not line.isascii():
                if REPLACEMENT in line:
                    self.broken += 1
                else:
                    self.valid_non_ascii += 1
            yield line

    def check(self, path: Path) -> None:
        """Refuse a file whose non-ASCII text is mostly not UTF-8 (at least 2 such lines and 1 in 100).

        A stray byte or two stays decoded (as U+FFFD) and counted by row instead.
        """
        if self.broken >= 2 and self.broken > self.valid_non_ascii and self.broken * 100 >= self.lines:
            raise SiteDataError(
                f"{path.name}: {self.broken} of {self.lines} lines are not valid UTF-8; the file looks like "
                "Windows-1252 or Latin-1 text. Export it again as UTF-8 (in Excel: 'CSV UTF-8')")
