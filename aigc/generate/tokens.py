"""Token bytes and where code ends: the small text rules :mod:`aigc.generate.text` applies."""

from __future__ import annotations

import functools
import re


def code_end(text: str, line_start: bool = False) -> int:
    """Where a code completion ends: the first newline followed by a line that starts at column 0
    (a new ``def``, ``class``, ``if __name__``, a comment, ...), or 0 when ``line_start`` (the
    prompt ended a line) and the text itself starts at column 0. -1 when it has not ended.
    """
    if line_start and text and not text[0].isspace():
        return 0
    m = _DEDENT.search(text)
    return m.start() if m else -1


_DEDENT = re.compile(r"\n(?=\S)")


@functools.lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """Character -> byte of the byte-level BPE alphabet (Radford et al. 2019, GPT-2): the printable
    Latin-1 bytes stand for themselves, the other 68 bytes for U+0100 onwards, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("\u00a1"), ord("\u00ac") + 1)) | \
        set(range(ord("\u00ae"), ord("\u00ff") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table
