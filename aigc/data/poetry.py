"""Forms of regulated verse (近体诗) and a checker: 五言/七言 绝句 and 律诗, their tonal templates,
rhyme by the 平水韵 (:mod:`aigc.data.rhyme`).

A poem is text as the shipped corpus holds it: an optional title line, then one couplet per line,
``上句，下句。`` (a 绝句 has two couplets, a 律诗 four). The four line patterns of five characters
(Wang Li, 《汉语诗律学》, 1958, section 1.8; the standard account):

    A 仄仄平平仄    B 平平仄仄平 (rhymed)    C 平平平仄仄    D 仄仄仄平平 (rhymed)

and of seven, each with two characters of the opposite tone in front (A7 平平仄仄平平仄 and so
on). A couplet is A+B or C+D (对: the second line answers the first); the next couplet's first
line has the same second-character tone as the line before it (粘), so B is followed by C and D
by A. The even lines rhyme on a 平 group; the first line may rhyme too (首句入韵: D or B
instead of A or C). That gives four templates, named by the tone of the first line's second
character (平起 / 仄起) and by whether the first line rhymes.

With the 一三五不论 leniency (the default, as teachers state it) only the second, fourth and
sixth characters and the last one must keep the template's tone; strict checking tests every
character. Characters of both tones fit either.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from aigc.data.rhyme import PING, ZE, RhymeTables, rhyme_tables
from aigc.errors import AigcError

COUPLET_ENDS = "。？！；"  # marks that close a couplet, all read as 。
PATTERNS5 = {"A": "仄仄平平仄", "B": "平平仄仄平", "C": "平平平仄仄", "D": "仄仄仄平平"}
FOLLOW = {"B": "C", "D": "A"}  # 粘: the pattern after the second line of a couplet
ANSWER = {"A": "B", "C": "D"}  # 对: the second line of a couplet
RHYMED_FIRST = {"A": "D", "C": "B"}  # the first line when it rhymes too


@dataclass(frozen=True)
class Form:
    """A regulated-verse form: ``chars`` per line (5 or 7) and ``lines`` (4: 绝句, 8: 律诗)."""

    name: str
    chars: int
    lines: int


FORMS = {f.name: f for f in (Form("五言绝句", 5, 4), Form("七言绝句", 7, 4), Form("五言律诗", 5, 8),
                             Form("七言律诗", 7, 8))}
ALIASES = {"五绝": "五言绝句", "七绝": "七言绝句", "五律": "五言律诗", "七律": "七言律诗"}


def form_named(name: str) -> Form:
    """The form called ``name`` (五言绝句 or 五绝, ...).

    Raises:
        AigcError: an unknown form, listing the known ones.
    """
    form = FORMS.get(ALIASES.get(name, name))
    if form is None:
        raise AigcError(f"form {name!r}: expected one of {', '.join(FORMS)} (or {', '.join(ALIASES)})")
    return form


def line_pattern(kind: str, chars: int) -> str:
    """The tones of line pattern ``kind`` (A-D) for lines of ``chars`` characters."""
    five = PATTERNS5[kind]
    if chars == 5:
        return five
    lead = "仄仄" if five[1] == PING else "平平"  # the opposite of the five-character line's first tone
    return lead + five


def templates(form: Form) -> dict[str, list[str]]:
    """The form's four tonal templates: name (e.g. ``仄起首句不入韵``) -> one tone string per line."""
    out = {}
    for first in ("A", "C"):
        for rhymed in (False, True):
            kinds, k = [], first
            for _ in range(form.lines // 2):
                kinds += [k, ANSWER[k]]
                k = FOLLOW[ANSWER[k]]
            if rhymed:
                kinds[0] = RHYMED_FIRST[first]
            tones = [line_pattern(x, form.chars) for x in kinds]
            name = f"{'平' if tones[0][1] == PING else '仄'}起首句{'入' if rhymed else '不入'}韵"
            out[name] = tones
    return out


def required_positions(chars: int, lenient: bool) -> list[int]:
    """0-based positions whose tone is checked: with ``lenient`` (一三五不论) the even positions and the last."""
    if not lenient:
        return list(range(chars))
    return sorted({i for i in range(chars) if i % 2 == 1} | {chars - 1})


def poem_lines(text: str, marks: str = "，。？！；") -> tuple[str, list[str], list[str]]:
    """Split a poem into (title, lines without punctuation, the punctuation after each line).

    The title is the first line when the text has a line without ``，`` or ``。``; each remaining line
    is split after every ``，`` ``。`` ``？`` ``！`` ``；``.
    """
    rows = [r.strip() for r in text.strip().split("\n") if r.strip()]
    title = ""
    if rows and not any(p in rows[0] for p in marks):
        title, rows = rows[0], rows[1:]
    lines, found, cur = [], [], ""
    for ch in "".join(rows):
        if ch in marks:
            lines.append(cur)
            found.append(ch)
            cur = ""
        else:
            cur += ch
    if cur:
        lines.append(cur)
        found.append("")
    return title, lines, found


def repeated_characters(text: str, marks: str = "，。？！；") -> list[str]:
    """The characters of a poem's body that come again after their first use (重字, which regulated verse
    avoids), in order; a 叠字 (a character twice in a row within a line, not three times) is not a repeat."""
    seen, out = set(), []
    for line in poem_lines(text, marks)[1]:
        for i, ch in enumerate(line):
            double = i > 0 and line[i - 1] == ch and not (i > 1 and line[i - 2] == ch)
            if ch in seen and not double:
                out.append(ch)
            seen.add(ch)
    return out


@dataclass
class Verdict:
    """The checker's verdict on one poem for one form.

    Attributes:
        form_ok: line count, characters per line and punctuation exact (each couplet's first line ends
            in ，, its second in 。, or ？ ！ ； which editors also print there).
        rhyme_ok: the rhyming lines' last characters share a 平 group of the 平水韵.
        tone: the share of checked positions whose character can take the template's tone
            (under the best-fitting of the four templates).
        template: that template's name; group: the shared rhyme group (None when none).
        problems: what failed, in words.
    """

    form_ok: bool
    rhyme_ok: bool
    tone: float
    template: str | None
    group: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Form, rhyme and every checked tone right."""
        return self.form_ok and self.rhyme_ok and self.tone == 1.0


def check(text: str, form: Form | str, lenient: bool = True, tables: RhymeTables | None = None) -> Verdict:
    """Check a poem (see :func:`poem_lines`) against ``form``."""
    form = form_named(form) if isinstance(form, str) else form
    tables = tables or rhyme_tables()
    _, lines, marks = poem_lines(text)
    problems = []
    if len(lines) != form.lines:
        problems.append(f"{len(lines)} lines; {form.name} has {form.lines}")
    bad = [i + 1 for i, line in enumerate(lines) if len(line) != form.chars]
    if bad:
        problems.append(f"line{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} not {form.chars} characters")
    marks = ["。" if m in COUPLET_ENDS else m for m in marks]
    want = ["，" if i % 2 == 0 else "。" for i in range(len(lines))]
    if marks != want:
        problems.append("punctuation is not ， and 。 alternating")
    form_ok = not problems
    if not form_ok:
        return Verdict(False, False, 0.0, None, None, problems)
    positions = required_positions(form.chars, lenient)
    best = None  # (hits, rhymes, name, group): the best-fitting template, a rhyming one among equals
    for name, tones in templates(form).items():
        hits = sum(tones[k][i] in tables.tones(line[i]) for k, line in enumerate(lines) for i in positions)
        group = _shared_group(tables, [lines[k][-1] for k in range(form.lines)
                                       if k % 2 == 1 or (k == 0 and "首句入韵" in name)])
        if best is None or (hits, group is not None) > best[:2]:
            best = (hits, group is not None, name, group)
    hits, _, name, group = best
    tone = hits / (len(positions) * form.lines)
    if group is None:
        problems.append("the rhyming lines end in characters of no common 平 group: "
                        + "".join(lines[k][-1] for k in range(1, form.lines, 2)))
    if tone < 1:
        problems.append(f"tones: {tone:.0%} of the checked positions fit the {name} template")
    return Verdict(True, group is not None, tone, name, group, problems)


def _shared_group(tables: RhymeTables, ends: list[str]) -> str | None:
    """A 平 group of the 平水韵 every character of ``ends`` belongs to (None when there is none)."""
    shared = None
    for ch in ends:
        groups = {g for g in tables.shi_groups(ch) if tables.groups[g] == PING}
        shared = groups if shared is None else shared & groups
    return min(shared) if shared else None


TUNES_PATH = Path(__file__).parent / "builtin" / "ci-tunes.json"
_CI_MARKS = {"，": "，", "、": "，", "：": "，", "。": "。", "？": "。", "！": "。", "；": "。"}


@dataclass(frozen=True)
class Tune:
    """A ci tune (词牌) as the Song ci write it (``scripts/build_ci_tunes.py``): its clauses (chars, mark ，
    or 。, rhyme, tones 平/仄/中 per position), the tone of its main rhyme, how many ci it was read from
    and how many follow this pattern."""

    name: str
    ci: int
    follow: int
    rhyme_tone: str
    lines: tuple


@functools.lru_cache(maxsize=1)
def tunes() -> dict[str, Tune]:
    """The shipped ci tunes, most written first."""
    raw = json.loads(TUNES_PATH.read_text(encoding="utf-8"))["tunes"]
    return {name: Tune(name, t["ci"], t["follow"], t["rhyme_tone"], tuple(t["lines"])) for name, t in raw.items()}


def tune_named(name: str) -> Tune:
    """The tune called ``name``.

    Raises:
        AigcError: an unknown tune, listing the known ones.
    """
    known = tunes()
    if name not in known:
        raise AigcError(f"tune {name!r}: not one of the {len(known)} known tunes: {', '.join(known)}")
    return known[name]


# 部 the Song poets rhymed together where the 词林正韵 (戈载, 1821, a Qing systematisation) splits
# them: 灰 between 第三部 and 第五部, 元 between 第六部 and 第七部, the -n/-ng/-m endings of 第六、十一、
# 十三部, 第九部 with 第十部, and the 入声 部 (第十五部 to 第十九部) among themselves. Read off the 73 of
# Xin Qiji's ci that fail the strict rule (RESULTS, "Poetry"); used only with ``neighbours=True``.
NEIGHBOURS = [{"第三部", "第五部"}, {"第六部", "第七部", "第十一部", "第十三部"}, {"第九部", "第十部"},
              {"第十五部", "第十六部", "第十七部", "第十八部", "第十九部"}]


def _rhyme_class(part: str, neighbours: bool) -> str:
    """A 部 name (``第三部平``), or with ``neighbours`` the first 部 of its NEIGHBOURS set and its tone."""
    if neighbours:
        name, tone = part[:-1], part[-1]
        for merged in NEIGHBOURS:
            if name in merged:
                return min(merged) + tone
    return part


def check_ci(text: str, tune: Tune | str, tables: RhymeTables | None = None, neighbours: bool = False) -> Verdict:
    """Check a ci against ``tune``: its clauses' lengths and marks (，、： as ，; 。？！； as 。), the
    rhyme (the rhyme clauses' last characters share a 词林正韵 部 of the tune's rhyme tone; with
    ``neighbours``, a 部 or one the Song poets rhymed with it, :data:`NEIGHBOURS`) and the tones at the
    tune's fixed positions."""
    tune = tune_named(tune) if isinstance(tune, str) else tune
    tables = tables or rhyme_tables()
    _, lines, marks = poem_lines(text, marks="".join(_CI_MARKS))
    marks = [_CI_MARKS.get(m, m) for m in marks]
    problems = []
    want = [(x["chars"], x["mark"]) for x in tune.lines]
    if list(zip(map(len, lines), marks)) != want:
        problems.append(f"clauses {[len(x) for x in lines]} do not follow {tune.name}: {[n for n, _ in want]} "
                        f"with its marks")
        return Verdict(False, False, 0.0, None, None, problems)
    fixed = [(k, i, t) for k, x in enumerate(tune.lines) for i, t in enumerate(x["tones"]) if t in (PING, ZE)]
    hits = sum(t in tables.tones(lines[k][i]) for k, i, t in fixed)
    tone = hits / len(fixed) if fixed else 1.0
    shared = None
    for k, x in enumerate(tune.lines):
        if x["rhyme"]:
            mine = {_rhyme_class(p, neighbours) for p in tables.ci_parts(lines[k][-1]) if p.endswith(tune.rhyme_tone)}
            shared = mine if shared is None else shared & mine
    group = min(shared) if shared else None
    if group is None:
        problems.append("the rhyme clauses end in characters of no common 词林正韵 部")
    if tone < 1:
        problems.append(f"tones: {tone:.0%} of the fixed positions fit {tune.name}")
    return Verdict(True, group is not None, tone, tune.name, group, problems)


_FORM_WORDS = [("五言绝句", "五言绝句"), ("七言绝句", "七言绝句"), ("五言律诗", "五言律诗"), ("七言律诗", "七言律诗"),
               ("五绝", "五言绝句"), ("七绝", "七言绝句"), ("五律", "五言律诗"), ("七律", "七言律诗"),
               ("绝句", "七言绝句"), ("律诗", "七言律诗")]
_QUOTED = re.compile(r"[“\"「『《]([^”\"」』》]{1,40})[”\"」』》]")
_THEME = [re.compile(p) for p in (r"关于(.{1,20}?)的", r"以(.{1,20}?)为题", r"题为(.{1,20}?)(?:的|，|,|$)",
                                   r"咏(.{1,20}?)的", r"写(?:一首)?(.{1,20}?)的")]
_ACROSTIC = re.compile(r"藏头(?:诗)?[：:，, ]*(?:为|是)?[“\"「]?((?!藏头)[\u4e00-\u9fff]{2,8})[”\"」]?")


def parse_instruction(text: str) -> dict | None:
    """A request for a poem in plain Chinese -> ``{"form", "theme", "acrostic"}``, or None when ``text``
    asks for no regulated verse (no form word and no 藏头).

    ``写一首关于秋天的七言绝句`` gives 七言绝句 on 秋天; ``以“春风”为题写一首藏头诗`` a 七言绝句 whose lines
    begin 春 and 风; ``写一首五律，藏头：春夏秋冬`` a 五言律诗 beginning 春夏秋冬. Without a form word a
    藏头诗 is a 七言绝句, 绝句 alone is 七言, 律诗 alone 七言.
    """
    text = text.strip()
    form = next((name for word, name in _FORM_WORDS if word in text), None)
    wants_acrostic = "藏头" in text
    if form is None and not wants_acrostic:
        return None
    form = form or "七言绝句"
    quoted = _QUOTED.search(text)
    theme = quoted.group(1).strip() if quoted else None
    if theme is None:
        for pattern in _THEME:
            m = pattern.search(text)
            if m and m.group(1).strip() and not any(w in m.group(1) for w, _ in _FORM_WORDS):
                theme = m.group(1).strip()
                break
    acrostic = ""
    if wants_acrostic:
        found = list(_ACROSTIC.finditer(text))  # the last: "藏头诗，藏头为春夏秋冬"
        acrostic = found[-1].group(1) if found else (theme or "")
        acrostic = "".join(c for c in acrostic if "\u4e00" <= c <= "\u9fff")[:FORMS[form].lines]
    if theme is None or theme.startswith("藏头"):
        theme = acrostic or "无题"
    return {"form": form, "theme": theme, "acrostic": acrostic}


__all__ = ["Tune", "check_ci", "tune_named", "tunes", "parse_instruction", "FORMS", "Form", "Verdict", "check", "form_named", "line_pattern", "poem_lines", "required_positions",
           "templates", "PING", "ZE"]
