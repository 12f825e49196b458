"""Which text encoding a CSV or JSON Lines export is in, and its lines as text.

Decoded: UTF-8 with or without a byte-order mark (BOM), UTF-16 and UTF-32 with a BOM, and UTF-16
or UTF-32 without one when the NUL bytes of mostly-ASCII text give it away. These are lossless
Unicode encodings, so nothing is guessed.
Refused, with a message that names the encoding and says to export as UTF-8: a ZIP (Excel)
file, and a file whose non-ASCII text is mostly not UTF-8 (Windows-1252 / Latin-1: decoding it
as one 8-bit code page or another would be a guess that silently changes text).
A few undecodable bytes in an otherwise UTF-8 file become U+FFFD, and the rows holding them are
counted by the caller (`tables.undecodable`).

Lines are read at most `limit` characters at a time, so one huge line never becomes one huge
string: a line longer than the limit is skipped to its end and stands as OVERLONG.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from client.site_data.errors import SiteDataError

REPLACEMENT = "\ufffd"
OVERLONG = ""  # stands for a line longer than the limit (a real line is never empty: it ends the file or has a line end)
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


def open_text(path: Path, newline: str = "") -> tuple[IO[str], str]:
    """The file as a text stream, and the codec used.

    Lines end (line ends kept) at LF, CR or CRLF with `newline` "" (CSV), at LF only with "\n"
    (JSON Lines, where a CR is whitespace inside a record).
    """
    with path.open("rb") as raw:
        head = raw.read(SNIFF_BYTES)
    codec = sniff(path, head)
    return io.TextIOWrapper(path.open("rb"), encoding=codec, errors="replace", newline=newline), codec


class Utf8Tally:
    """Lines of a text stream of at most `limit` characters each (OVERLONG for a longer one), counting
    the lines of a UTF-8 stream with undecodable bytes and those with valid non-ASCII text."""

    def __init__(self, lines: IO[str], codec: str, *, limit: int, cr_ends: bool) -> None:
        self._lines = lines
        self.utf8 = codec.startswith("utf-8")
        self.limit = limit
        self._ends = ("\n", "\r") if cr_ends else "\n"  # as the stream was opened (`open_text`)
        self.lines = self.broken = self.valid_non_ascii = 0

    def __iter__(self) -> Iterator[str]:
        read, size, ends, utf8 = self._lines.readline, self.limit + 1, self._ends, self.utf8
        lines = broken = valid = 0
        held = ""
        try:
            while line := held or read(size):
                lines += 1
                held = ""
                if len(line) >= size:  # a CRLF the size cut in two, or a line longer than the limit
                    line, held = _rest_of(line, read, size, ends)
                if utf8 and not line.isascii():
                    if REPLACEMENT in line:
                        broken += 1
                    else:
                        valid += 1
                yield line
        finally:
            self.lines, self.broken, self.valid_non_ascii = lines, broken, valid

    def check(self, path: Path) -> None:
        """Refuse a file whose non-ASCII text is mostly not UTF-8 (at least 2 such lines and 1 in 100).

        A stray byte or two stays decoded (as U+FFFD) and counted by row instead.
        """
        if self.broken >= 2 and self.broken > self.valid_non_ascii and self.broken * 100 >= self.lines:
            raise SiteDataError(
                f"{path.name}: {self.broken} of {self.lines} lines are not valid UTF-8; the file looks like "
                "Windows-1252 or Latin-1 text. Export it again as UTF-8 (in Excel: 'CSV UTF-8')")


def _rest_of(line: str, read: Callable[[int], str], size: int, ends: str | tuple[str, ...]) -> tuple[str, str]:
    """A line that filled a read of `size` characters, completed (OVERLONG if it is longer than
    size - 1 characters, its line end excluded), and the piece read after it."""
    ahead = read(size)
    if ahead == "\n" and line[-1] == "\r":
        return line + "\n", ""
    if line.endswith(ends):
        return line, ahead
    while ahead:  # longer than the limit: skip to its end, a piece at a time
        piece, ahead = ahead, read(size)
        if ahead == "\n" and piece[-1] == "\r":
            piece, ahead = piece + "\n", read(size)
        if piece.endswith(ends):
            break
    return OVERLONG, ahead
