"""ABC notation as text: tunes split out of a file, normalised to one canonical header, checked
for the characters and header fields a tune may hold, and measured bar by bar.

ABC (Chris Walshaw; standard 2.1, abcnotation.com/wiki/abc:standard:v2.1) writes a tune as
header fields (``X:`` number, ``T:`` title, ``M:`` meter, ``L:`` unit note length, ``R:`` rhythm,
``K:`` key, which ends the header) and a body of notes (``A``-``G`` ``a``-``g``, ``^`` ``=`` ``_``
accidentals, ``'`` ``,`` octave marks, lengths as multiples of the unit: ``2`` ``/2`` ``3/2``),
rests (``z``), bar lines (``|`` ``||`` ``|:`` ``:|``), chords (``[CEG]``), ties (``-``), broken
rhythm (``>`` ``<``) and tuplets (``(3``).

A normalised tune is what the music models read and write::

    R:jig            (only when the source names a tune type; lower case)
    M:6/8
    L:1/16           (only when it is not the standard's default: 1/16 below a meter of 3/4, else 1/8)
    K:D
    body lines ...

Titles, reference numbers, composers, sources, notes and transcriber lines are dropped; so are
chord symbols and annotations (``"..."``), decorations (``!trill!``, ``~`` ``T`` ``H`` ...), grace
notes (``{...}``), lyrics (``w:``) and comments (``%``). A tune is one document; the tokenizer's
end-of-text token ends it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from aigc.errors import AigcError

HEADER_KEPT = ("R", "M", "L", "K")
BODY_CHARS = set("ABCDEFGabcdefgzxZ0123456789/,'^_=|:[]()-<> \n")
METER = re.compile(r"^(C\|?|none|\d{1,2}/\d{1,2}|\d{1,2}(\+\d{1,2})+/\d{1,2})$")
UNIT = re.compile(r"^1/(1|2|4|8|16|32|64)$")
KEY = re.compile(r"^(none|HP|Hp|[A-G][#b]?\s*(m|min|maj|major|minor|ion|dor|phr|lyd|mix|aeo|loc|ionian|dorian|"
                 r"phrygian|lydian|mixolydian|aeolian|locrian)?)(\s+[_^=][A-Ga-g])*$", re.IGNORECASE)
FIELD = re.compile(r"^([A-Za-z]):\s*(.*?)\s*$")
_DROP = [re.compile(p) for p in (r'"[^"\n]*"', r"![^!\n]*!", r"\+[^+\n]*\+", r"\{[^}\n]*\}")]
_DECORATIONS = re.compile(r"[~.`!H-Wh-wYy]")  # decoration symbols, user symbols, spacers, beam-break ticks
_INLINE = re.compile(r"\[([A-Za-z]):([^\]\n]*)\]")
_SPACES = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class Header:
    """A normalised tune's header: meter (``6/8``, ``C``, ``none``), unit length (``1/8``), key, tune type."""

    meter: str
    unit: str
    key: str
    rhythm: str = ""

    @property
    def bar_length(self) -> Fraction | None:
        """One full bar in whole notes (``6/8`` -> 3/4, ``C`` -> 1); None for free meter."""
        if self.meter == "none":
            return None
        if self.meter in ("C", "C|"):
            return Fraction(1) if self.meter == "C" else Fraction(1)
        top, bottom = self.meter.split("/")
        return Fraction(sum(int(x) for x in top.split("+")), int(bottom))


def default_unit(meter: str) -> str:
    """The standard's default unit note length for ``meter``: 1/16 below 3/4, else 1/8 (free meter: 1/8)."""
    if meter in ("none", "C", "C|"):
        return "1/8"
    top, bottom = meter.split("/")
    return "1/16" if Fraction(sum(int(x) for x in top.split("+")), int(bottom)) < Fraction(3, 4) else "1/8"


def split_tunes(text: str) -> list[tuple[int, str]]:
    """The tunes of an ABC file: ``(line number of its X: field, text)``, in file order."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if re.match(r"^X:", line)]
    out = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        out.append((start + 1, "\n".join(lines[start:end]).strip("\n")))
    return out


def _clean_body_line(line: str) -> str:
    """One body line without comments, annotations, decorations, grace notes or other inline fields."""
    line = line.split("%", 1)[0].rstrip().removesuffix("\\")
    for pattern in _DROP:
        line = pattern.sub("", line)
    line = _INLINE.sub(lambda m: f"[{m.group(1)}:{m.group(2).strip()}]" if m.group(1) in "KML" else "", line)
    parts = re.split(r"(\[[KML]:[^\]]*\])", line)  # decorations are letters: leave inline fields alone
    line = "".join(p if p.startswith("[") and ":" in p[:3] else _DECORATIONS.sub("", p) for p in parts)
    return _SPACES.sub(" ", line).strip()


def normalise_tune(raw: str, name: str = "tune") -> str:
    """A tune's text (from its ``X:`` line) in normalised form (see the module docstring).

    Raises:
        AigcError: naming ``name``: no ``K:`` field, a meter, unit length or key that is not ABC, a
            character a tune body cannot hold, or no notes at all.
    """
    fields: dict[str, str] = {}
    lines = raw.split("\n")
    i = 0
    while i < len(lines):
        m = FIELD.match(lines[i].split("%", 1)[0])
        i += 1
        if m:
            fields.setdefault(m.group(1), m.group(2))
            if m.group(1) == "K":
                break
    if "K" not in fields:
        raise AigcError(f"{name}: no K: (key) field ending the header")
    header = header_of(fields, name)
    body = []
    for line in lines[i:]:
        if not line.strip():
            break  # an empty line ends a tune
        m = FIELD.match(line)
        if m:
            if m.group(1) in "KML":
                body.append(f"[{m.group(1)}:{m.group(2)}]")  # a change of key, meter or unit mid-tune
            continue
        cleaned = _clean_body_line(line)
        if cleaned:
            body.append(cleaned)
    text = "\n".join(body)
    check_body(text, name)
    return header_text(header) + text + "\n"


def header_of(fields: dict[str, str], name: str = "tune") -> Header:
    """The normalised :class:`Header` of raw header fields (``{"M": "6/8", "K": "D", ...}``).

    Raises:
        AigcError: naming ``name`` and the field: a value ABC does not allow.
    """
    meter = re.sub(r"\s+", "", fields.get("M", "none")) or "none"
    meter = {"C": "C", "c": "C", "C|": "C|", "NONE": "none", "None": "none"}.get(meter, meter)
    if not METER.match(meter) or ("/" in meter and (meter.endswith("/0") or meter.startswith("0/"))):
        raise AigcError(f"{name}: M:{fields.get('M')} is not an ABC meter (expected e.g. 6/8, 3/4, C, C|, none)")
    unit = re.sub(r"\s+", "", fields.get("L", "")) or default_unit(meter)
    if not UNIT.match(unit):
        raise AigcError(f"{name}: L:{fields.get('L')} is not an ABC unit note length (expected 1/1 up to 1/64)")
    key = re.sub(r"\s+", " ", fields["K"].split("%", 1)[0]).strip()
    key = re.sub(r"^([A-G][#b]?) (?=[A-Za-z])", r"\1", key)  # "D mix" -> "Dmix"
    if not KEY.match(key):
        raise AigcError(f"{name}: K:{fields['K']} is not an ABC key (expected e.g. D, Ador, Bm, F#mix, none)")
    rhythm = re.sub(r"[^a-z ]", "", fields.get("R", "").lower()).strip()
    return Header(meter, unit, key, rhythm if 0 < len(rhythm) <= 20 else "")


def header_text(header: Header) -> str:
    """The normalised header lines (``R:`` and ``L:`` only when they say something)."""
    out = f"R:{header.rhythm}\n" if header.rhythm else ""
    out += f"M:{header.meter}\n"
    if header.unit != default_unit(header.meter):
        out += f"L:{header.unit}\n"
    return out + f"K:{header.key}\n"


def check_body(body: str, name: str = "tune") -> None:
    """Raise unless ``body`` holds only ABC body characters and at least one note.

    Raises:
        AigcError: naming ``name``, the line and the character.
    """
    for lineno, line in enumerate(body.split("\n"), 1):
        outside = _INLINE.sub("", line)
        bad = next((c for c in outside if c not in BODY_CHARS), None)
        if bad is not None:
            raise AigcError(f"{name}: body line {lineno} holds {bad!r}, which is not ABC music")
    if not re.search(r"[A-Ga-g]", _INLINE.sub("", body)):
        raise AigcError(f"{name}: the tune has no notes")


_TOKEN = re.compile(r"(?P<note>[_^=]{0,2}[A-Ga-g][,']*(\d*/*\d*))|(?P<rest>[zxZ](\d*/*\d*))"
                    r"|(?P<chord>\[(?:[_^=]{0,2}[A-Ga-g][,']*\d*/*\d*)+\](\d*/*\d*))|(?P<field>\[[KLM]:[^\]\n]*\])"
                    r"|(?P<bar>:*\|[|\]:]*[12]?|:+[|:]*|\[\|[|:]*|\[[12]|\|?\])|(?P<ending>[12](?=[ (\[A-Ga-gz_^=]))|(?P<tuplet>\(\d(?::\d*){0,2})|(?P<open>\()"
                    r"|(?P<close>\))|(?P<tie>-)|(?P<broken>[<>]{1,3})|(?P<space>[ \n]+)")


def syntax_problem(body: str) -> str | None:
    """Why a tune body is not well-formed ABC 2.1, or None: every character must belong to a note, rest,
    chord, bar line, tuplet, slur, tie, broken-rhythm mark, inline field or space; a length belongs to a
    note, a tie and a broken-rhythm mark follow one, a broken-rhythm mark is followed by one, and slurs
    close as they open."""
    pos, depth, prev = 0, 0, ""
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if not m or m.end() == pos:
            return f"{body[pos]!r} at character {pos + 1} belongs to no note, rest, bar line or mark"
        kind = next(k for k, v in m.groupdict().items() if v is not None)
        if kind == "ending" and prev != "bar":
            return f"{m.group()!r} at character {pos + 1} belongs to no note, rest, bar line or mark"
        if kind in ("tie", "broken") and prev not in ("note", "chord", "rest", "close") + (("tie",) * (kind == "broken")):
            return f"{m.group()!r} at character {pos + 1} follows no note"
        if prev == "broken" and kind not in ("note", "chord", "rest", "open", "tuplet"):
            return f"a broken-rhythm mark before character {pos + 1} is followed by no note"
        depth += (kind == "open") - (kind == "close")
        if depth < 0:
            return f"')' at character {pos + 1} closes no slur"
        if kind != "space":
            prev = kind
        pos = m.end()
    return "a slur is opened and never closed" if depth > 0 else None


def parse_header(text: str, name: str = "prompt") -> tuple[Header | None, str]:
    """The header of a normalised tune or a prompt, and the rest of the text.

    A prompt may stop inside the header (``M:6/8\\n`` or ``M:6/8\\nK:D\\n``); its fields are
    checked all the same. Returns ``(None, text)`` when ``text`` starts with no field.

    Raises:
        AigcError: naming ``name`` and the field: an unknown field, a bad value or a field twice.
    """
    fields: dict[str, str] = {}
    rest = text
    while True:
        line, sep, after = rest.partition("\n")
        m = FIELD.match(line)
        if not m or (not sep and m.group(1) != "K"):
            break
        if m.group(1) not in HEADER_KEPT:
            raise AigcError(f"{name}: field {m.group(1)}: is not one a normalised tune has (R:, M:, L:, K:)")
        if m.group(1) in fields:
            raise AigcError(f"{name}: field {m.group(1)}: given twice")
        fields[m.group(1)] = m.group(2)
        rest = after
        if m.group(1) == "K":
            break
    if not fields:
        return None, text
    probe = dict(fields)
    probe.setdefault("K", "C")
    header = header_of(probe, name)
    return (header if "K" in fields else Header(header.meter, header.unit, "", header.rhythm)), rest


_NOTE = re.compile(r"(\((\d)(?::\d*)?(?::\d*)?)|(\[(?![A-Za-z]:)[^\]]*\](\d*/*\d*))|([_^=]*[A-Ga-gzx][,']*(\d*/*\d*))"
                   r"|([<>]+)|(\[?[:|]+[\]\d]*|\])|(\[[A-Za-z]:[^\]]*\])")


def _length(text: str) -> Fraction:
    """A note length suffix (``2``, ``/``, ``/2``, ``3/2``, ``//``) as a multiple of the unit."""
    if not text:
        return Fraction(1)
    if "/" not in text:
        return Fraction(int(text))
    top, _, bottom = text.partition("/")
    slashes = text.count("/")
    num = int(top) if top else 1
    den = int(bottom.strip("/")) if bottom.strip("/") else 2 ** slashes
    return Fraction(num, den)


@dataclass(frozen=True)
class Bar:
    """One bar: its length and the meter's bar length then (whole notes; None in free meter), and
    whether a section ends with it (``||`` ``:|`` ``|:`` ``::`` ``|]``, a repeat or an ending)."""

    length: Fraction
    expected: Fraction | None
    section_end: bool


def bars_of(tune: str) -> list[Bar]:
    """The bars of a normalised tune, in order.

    Counts notes, rests and chords (a chord lasts as its first note) with broken rhythm
    (``a>b``: dotted, then halved) and tuplets (``(3abc``: three in the time of two; ``(2`` and
    ``(4`` in the time of three; the standard's defaults). Mid-tune ``[L:]`` and ``[M:]`` fields are
    followed.

    Raises:
        AigcError: the tune has no header (see :func:`parse_header`).
    """
    header, body = parse_header(tune, "tune")
    if header is None or not header.key:
        raise AigcError("tune: no normalised header (M: ... K:) before the body")
    unit, expected = Fraction(header.unit), header.bar_length
    bars, current, tuplet, pending, last = [], Fraction(0), [], None, None
    for m in _NOTE.finditer(body.replace("\n", " ")):
        if m.group(1):  # tuplet (p
            p = int(m.group(2))
            tuplet = [Fraction({2: 3, 3: 2, 4: 3, 6: 2, 8: 3}.get(p, 2), p)] * p
        elif m.group(3) or m.group(5):  # a chord or a note/rest
            if m.group(3):
                inner = _NOTE.search(m.group(3)[1:-1 - len(m.group(4) or "")] or "z")
                length = (_length(inner.group(6) or "") if inner and inner.group(5) else 1) * _length(m.group(4))
            else:
                length = _length(m.group(6))
            length *= unit * (tuplet.pop(0) if tuplet else 1)
            if pending is not None:
                length, pending = length * pending, None
            current, last = current + length, length
        elif m.group(7) and last is not None:  # broken rhythm: a>b, a>>b, a<b
            n = len(m.group(7))
            factor = Fraction(2 ** (n + 1) - 1, 2 ** n)  # >: 3/2, >>: 7/4
            first = factor if m.group(7)[0] == ">" else 2 - factor
            current += last * (first - 1)
            pending = 2 - first
        elif m.group(8):  # a bar line
            if current > 0:
                bars.append(Bar(current, expected, m.group(8).strip("|") != "" or m.group(8).count("|") > 1))
            current, last = Fraction(0), None
        elif m.group(9):
            field, value = m.group(9)[1], m.group(9)[3:-1].strip()
            if field == "L" and UNIT.match(value):
                unit = Fraction(value)
            elif field == "M":
                try:
                    expected = header_of({"M": value, "K": "C"}).bar_length
                except AigcError:
                    pass
    if current > 0:
        bars.append(Bar(current, expected, True))
    return bars


def meter_fit(tune: str) -> tuple[int, int]:
    """``(bars that fill the meter, bars counted)`` for a normalised tune.

    A pickup (a short first bar) and a short last bar are not counted; a short bar that ends a
    section and the short bar after it count as one bar when together they fill the meter (a
    section's last bar and the next section's pickup). Free-meter bars are not counted.
    """
    bars = bars_of(tune)
    fit = counted = 0
    i = 0
    while i < len(bars):
        bar = bars[i]
        short = bar.expected is not None and bar.length < bar.expected
        if bar.expected is None or (short and i in (0, len(bars) - 1)):
            i += 1
            continue
        if short and bar.section_end and i + 1 < len(bars) and bar.length + bars[i + 1].length == bar.expected:
            fit, counted, i = fit + 1, counted + 1, i + 2
            continue
        fit, counted, i = fit + (bar.length == bar.expected), counted + 1, i + 1
    return fit, counted


__all__ = ["syntax_problem", "Bar", "Header", "bars_of", "meter_fit", "check_body", "default_unit", "header_of", "header_text", "normalise_tune",
           "parse_header", "split_tunes"]
