"""Transposing a normalised ABC tune by whole semitones, as text: the key moves by the interval and
every note keeps its place in the scale (a D-major jig up a major second is the same jig in E major),
with accidentals written only where the new key and the bar so far would not give the pitch.

Used for ``data.transpose`` (augmenting the training tunes; :func:`aigc.data.shards.prepare`).
"""

from __future__ import annotations

import re

from aigc.data.abc import parse_header
from aigc.errors import AigcError

LETTERS = "CDEFGAB"
NATURAL = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
STEPS = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 5, 9: 5, 10: 6, 11: 6}  # semitones -> letter steps
MODES = {"": (0, 0), "maj": (0, 0), "major": (0, 0), "ion": (0, 0), "ionian": (0, 0), "dor": (2, 1), "dorian": (2, 1),
         "phr": (4, 2), "phrygian": (4, 2), "lyd": (5, 3), "lydian": (5, 3), "mix": (7, 4), "mixolydian": (7, 4),
         "m": (9, 5), "min": (9, 5), "minor": (9, 5), "aeo": (9, 5), "aeolian": (9, 5), "loc": (11, 6), "locrian": (11, 6)}
_KEY = re.compile(r"^([A-G])([#b]?)([A-Za-z]*)$")
NOTE_TOKEN = re.compile(r"(\[[KLM]:[^\]]*\])|([_^=]{0,2})([A-Ga-g])([,']*)|(\|)")
_MARK = {-2: "__", -1: "_", 0: "=", 1: "^", 2: "^^"}


def _shift(letter: str, steps: int) -> tuple[str, int]:
    """The letter ``steps`` scale steps above ``letter`` and how many octaves that crosses."""
    i = LETTERS.index(letter) + steps
    return LETTERS[i % 7], i // 7


def signature(key: str) -> dict[str, int] | None:
    """The key signature of an ABC key (``D``, ``Ador``, ``Bbm``, ``F#mix``): letter -> -1, 0 or +1;
    None for a key this module does not transpose (``none``, ``HP``, explicit accidentals after it)."""
    m = _KEY.match(key.strip())
    if not m or m.group(3).lower() not in MODES:
        return None
    offset, degree = MODES[m.group(3).lower()]
    tonic = (NATURAL[m.group(1)] + {"#": 1, "b": -1, "": 0}[m.group(2)]) % 12
    parent_letter, _ = _shift(m.group(1), -degree)
    parent = (tonic - offset) % 12
    major = [0, 2, 4, 5, 7, 9, 11]
    out = {}
    for k in range(7):
        letter, _ = _shift(parent_letter, k)
        alter = ((parent + major[k]) - NATURAL[letter] + 6) % 12 - 6
        out[letter] = alter
    return out


def transpose_key(key: str, semitones: int) -> str | None:
    """The key ``semitones`` higher, spelled with at most 7 accidentals (``D`` +2 -> ``E``; ``Ador`` +1 ->
    ``Bbdor``); None for a key :func:`signature` does not know."""
    m = _KEY.match(key.strip())
    if not m or signature(key) is None:
        return None
    pitch = NATURAL[m.group(1)] + {"#": 1, "b": -1, "": 0}[m.group(2)]
    best = None
    for steps in {STEPS[semitones % 12] - 1, STEPS[semitones % 12], STEPS[semitones % 12] + 1}:
        letter, _ = _shift(m.group(1), steps % 7)
        alter = ((pitch + semitones) - NATURAL[letter] + 6) % 12 - 6
        if abs(alter) > 1:
            continue
        name = letter + {1: "#", -1: "b", 0: ""}[alter] + m.group(3)
        count = sum(abs(a) for a in signature(name).values())
        if best is None or count < best[0]:
            best = (count, name, steps)
    return None if best is None else best[1]


def transpose_tune(tune: str, semitones: int) -> str:
    """A normalised tune ``semitones`` higher (negative: lower).

    Raises:
        AigcError: a key that cannot be transposed (``K:none``, a key with explicit accidentals), or a
            key change inside the tune.
    """
    header, body = parse_header(tune, "tune")
    if header is None or not header.key:
        raise AigcError("tune: no normalised header")
    new_key = transpose_key(header.key, semitones)
    if new_key is None:
        raise AigcError(f"tune: K:{header.key} cannot be transposed")
    if "[K:" in body:
        raise AigcError("tune: a key change inside the tune is not transposed")
    old_sig, new_sig = signature(header.key), signature(new_key)
    up = (LETTERS.index(new_key[0]) - LETTERS.index(header.key[0])) % 7  # letter steps upwards, 0 to 6
    steps = up + 7 * (semitones // 12) if semitones >= 0 else (up - 7 if up else 0) - 7 * (-semitones // 12)
    old_bar: dict[tuple[str, int], int] = {}
    new_bar: dict[tuple[str, int], int] = {}

    def one(m: re.Match) -> str:
        if m.group(1):
            return m.group(1)
        if m.group(5):
            old_bar.clear()
            new_bar.clear()
            return "|"
        marks, char, octs = m.group(2), m.group(3), m.group(4)
        letter = char.upper()
        octave = 4 + (char.islower()) + octs.count("'") - octs.count(",")
        if marks:
            alter = {"^": 1, "^^": 2, "_": -1, "__": -2, "=": 0}[marks]
            old_bar[(letter, octave)] = alter
        else:
            alter = old_bar.get((letter, octave), old_sig[letter])
        pitch = 12 * octave + NATURAL[letter] + alter + semitones
        new_letter, crossed = _shift(letter, steps)
        new_octave = octave + crossed
        new_alter = pitch - 12 * new_octave - NATURAL[new_letter]
        if abs(new_alter) > 2:  # a spelling too far: take the octave the pitch is in
            new_octave += round(new_alter / 12)
            new_alter = pitch - 12 * new_octave - NATURAL[new_letter]
        mark = ""
        if new_bar.get((new_letter, new_octave), new_sig[new_letter]) != new_alter:
            if new_alter not in _MARK:
                raise AigcError(f"tune: a note ({m.group(0)}) cannot be spelled {semitones:+d} semitones away")
            mark = _MARK[new_alter]
            new_bar[(new_letter, new_octave)] = new_alter
        text = new_letter if new_octave <= 4 else new_letter.lower()
        return mark + text + "," * max(0, 4 - new_octave) + "'" * max(0, new_octave - 5)

    return tune.replace(f"K:{header.key}\n", f"K:{new_key}\n", 1).removesuffix(body) + NOTE_TOKEN.sub(one, body)


def augment(tunes: list[str], shifts: list[int]) -> tuple[list[str], int]:
    """Each tune transposed by each of ``shifts`` semitones (0 skipped), in order; and how many transpositions
    were skipped (a key that does not transpose)."""
    out, skipped = [], 0
    for tune in tunes:
        for k in shifts:
            if k == 0:
                continue
            try:
                out.append(transpose_tune(tune, k))
            except AigcError:
                skipped += 1
    return out, skipped


__all__ = ["NOTE_TOKEN", "augment", "signature", "transpose_key", "transpose_tune"]
