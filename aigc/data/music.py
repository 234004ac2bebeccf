"""Music corpora as text: ABC tunes from the collections inside the ``music21`` package, or from a
user's folder of ``.abc``, MIDI or MusicXML files, each tune normalised (:mod:`aigc.data.abc`).

A file or tune that cannot be read is skipped, named and counted in the corpus report; only
an empty corpus is an error. MIDI and MusicXML are read with music21 and written as ABC by
:func:`score_to_abc` (the first part's melody: a chord's top note, the first key and meter).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from aigc.data.abc import default_unit, header_of, header_text, normalise_tune, split_tunes
from aigc.errors import AigcError

# The ABC collections of music21's corpus (music21 10.5.1, `music21/corpus/`), with their terms as
# music21 states them (corpus/license.txt and each folder's notes).
COLLECTIONS = {
    "oneills1850": "O'Neill's Music of Ireland (1850 tunes, 1903), transcribed by Norbert Paap et al.",
    "ryansMammoth": "Ryan's Mammoth Collection (1883), contributed by Ray Davies et al.",
    "airdsAirs": "Aird's Selection of Scotch, English, Irish and Foreign Airs (1782-1803)",
    "miscFolk": "American fife tunes and Northumbrian minstrelsy",
    "essenFolksong": "the Essen folksong collection (EsAC, Helmut Schaffrath; ABC by Seymour Shlien): "
                     "permission for NON-COMMERCIAL distribution and use in music21 only",
}
TERMS = ("From the corpus inside the music21 package (BSD-3 software; corpus/license.txt): some encodings are "
         "for non-commercial use only or carry other restrictions (the Essen folksongs: non-commercial use only). "
         "Models trained on this data inherit those terms.")
MUSIC_SUFFIXES = (".abc", ".mid", ".midi", ".xml", ".musicxml", ".mxl")
MAX_FILE_BYTES = 4_000_000
MAX_QUARTERS = 20_000  # longest MIDI or MusicXML score read, in quarter notes (about three hours at 120 a minute)
MAX_UNZIPPED = 40_000_000  # bytes a compressed MusicXML (.mxl) may unpack to


def bach_chorales() -> list[Path]:
    """The chorales of J. S. Bach in music21's corpus (Riemenschneider's numbering; 370 of its 371 have a
    MusicXML file), as files.

    Raises:
        AigcError: music21 or its corpus is missing.
    """
    root = music21_corpus()
    from music21 import corpus

    files = []
    for name in corpus.chorales.Iterator(returnType="filename"):
        found = [root / f"{name}{suffix}" for suffix in (".mxl", ".xml") if (root / f"{name}{suffix}").is_file()]
        files += found[:1]  # one of the 371 (bwv18.5-l) is in the corpus under another name only: left out
    return files


def music21_corpus() -> Path:
    """The folder of music21's shipped corpus (without importing music21).

    Raises:
        AigcError: music21 is not installed, or installed without its corpus.
    """
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.origin:
        raise AigcError("the folk-abc dataset needs the music21 package: pip install music21")
    root = Path(spec.origin).parent / "corpus"
    if not (root / "oneills1850").is_dir():
        raise AigcError(f"{root}: this music21 has no corpus (install music21 from PyPI, whose wheel ships it)")
    return root


@dataclass
class MusicCorpus:
    """Tunes read from files: normalised texts, and what was skipped and why."""

    texts: list[str] = field(default_factory=list)
    files: int = 0
    skipped: list[str] = field(default_factory=list)  # "file[:line]: reason"
    duplicates: int = 0

    def report(self) -> str:
        """One line: kept, skipped (with the first reasons), duplicates."""
        out = f"{len(self.texts):,} tunes from {self.files:,} files"
        if self.duplicates:
            out += f"; {self.duplicates:,} duplicate tunes dropped"
        if self.skipped:
            out += f"; {len(self.skipped):,} skipped (first: {'; '.join(self.skipped[:3])})"
        return out


def read_music(paths: list[Path], progress: bool = True, label: str | None = None) -> MusicCorpus:
    """The tunes of ``paths`` (files, or folders searched for the suffixes in :data:`MUSIC_SUFFIXES`),
    normalised, in sorted file order, exact duplicates dropped.

    Raises:
        AigcError: a path that does not exist, or no tune at all (with the first reasons).
    """
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise AigcError(f"{path}: no such file or directory")
        if not path.is_dir() and not path.is_file():
            raise AigcError(f"{path}: not a regular file or a folder (a device, a pipe or a socket)")
        files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MUSIC_SUFFIXES) \
            if path.is_dir() else [path]
    corpus, seen = MusicCorpus(files=len(files)), set()
    for path in tqdm(files, desc="reading tunes", unit="file", disable=not progress or len(files) < 50):
        name = f"{label}/{path.parent.name}/{path.name}" if label else str(path)
        for where, text in _tunes_of(path, name, corpus):
            try:
                tune = normalise_tune(text, where)
            except AigcError as e:
                corpus.skipped.append(str(e))
                continue
            if tune in seen:
                corpus.duplicates += 1
                continue
            seen.add(tune)
            corpus.texts.append(tune)
    if not corpus.texts:
        where = ", ".join(str(p) for p in paths)
        raise AigcError(f"{where}: no readable tune ({'; '.join(corpus.skipped[:3]) or 'no music files'})")
    return corpus


def _tunes_of(path: Path, name: str, corpus: MusicCorpus) -> list[tuple[str, str]]:
    """``(where, raw ABC)`` of each tune of one file; a file that cannot be read is skipped and noted."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            corpus.skipped.append(f"{name}: larger than {MAX_FILE_BYTES:,} bytes")
            return []
        data = path.read_bytes() if path.suffix.lower() == ".abc" else b""
    except OSError as e:
        corpus.skipped.append(f"{name}: cannot read ({e.strerror})")
        return []
    if path.suffix.lower() != ".abc":
        try:
            return [(name, score_to_abc(read_score(path, name)))]
        except AigcError as e:
            corpus.skipped.append(str(e) if str(e).startswith(name) else f"{name}: {e}")
            return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # older ABC collections are Latin-1; the music is ASCII either way
    tunes = split_tunes(text)
    if not tunes:
        corpus.skipped.append(f"{name}: no tune (no X: field)")
    return [(f"{name}:{line}", tune) for line, tune in tunes]


def read_score(path: Path, name: str):
    """A music21 score from a MIDI or MusicXML (.xml, .musicxml, compressed .mxl) file.

    Raises:
        AigcError: naming ``name``: music21 cannot read it.
    """
    from music21 import converter  # imported here: music21 takes half a second to import

    fmt = "midi" if path.suffix.lower() in (".mid", ".midi") else "musicxml"
    _check_score_file(path, name, fmt)
    try:
        return converter.parse(str(path), format=fmt, forceSource=True)
    except Exception as e:  # noqa: BLE001  music21 raises many kinds on a bad file
        raise AigcError(f"{name}: not a readable {'MIDI' if fmt == 'midi' else 'MusicXML'} file "
                        f"({type(e).__name__})") from None


def _check_score_file(path: Path, name: str, fmt: str) -> None:
    """Refuse, before music21 reads it, a score that would take unbounded memory: a compressed MusicXML
    that unpacks to more than :data:`MAX_UNZIPPED` bytes, a MIDI file longer than :data:`MAX_QUARTERS`.

    Raises:
        AigcError: naming ``name`` and the reason.
    """
    if path.suffix.lower() == ".mxl":
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                unpacked = sum(i.file_size for i in z.infolist())
        except (zipfile.BadZipFile, OSError):
            raise AigcError(f"{name}: not a readable compressed MusicXML (.mxl) file") from None
        if unpacked > MAX_UNZIPPED:
            raise AigcError(f"{name}: unpacks to {unpacked:,} bytes; at most {MAX_UNZIPPED:,} are read")
    if fmt != "midi":
        return
    from music21 import midi
    mf = midi.MidiFile()
    try:
        mf.readstr(path.read_bytes())
    except Exception:  # noqa: BLE001  music21 raises many kinds on a bad file
        raise AigcError(f"{name}: not a readable MIDI file") from None
    ticks = max((sum(e.time for e in t.events if e.isDeltaTime()) for t in mf.tracks), default=0)
    quarters = ticks / max(mf.ticksPerQuarterNote or 1, 1)
    if quarters > MAX_QUARTERS:
        raise AigcError(f"{name}: lasts {quarters:,.0f} quarter notes; at most {MAX_QUARTERS:,} are read")


_STEPS = "CDEFGAB"


def _abc_pitch(pitch, key_alter: dict[str, int], bar_alter: dict[tuple[str, int], int]) -> str:
    """One pitch in ABC, with an accidental only where the key and the bar so far would not give it."""
    step, octave, alter = pitch.step, pitch.octave, int(pitch.alter)
    mark = ""
    if bar_alter.get((step, octave), key_alter.get(step, 0)) != alter:
        mark = {-2: "__", -1: "_", 0: "=", 1: "^", 2: "^^"}.get(alter, "")
        bar_alter[(step, octave)] = alter
    letter = step if octave <= 4 else step.lower()
    letter += "," * max(0, 4 - octave) + "'" * max(0, octave - 5)
    return mark + letter


def _abc_length(quarters: Fraction, unit: Fraction) -> str:
    """A length in quarter notes as an ABC length suffix of ``unit`` (whole notes)."""
    n = quarters / 4 / unit
    if n == 1:
        return ""
    if n.denominator == 1:
        return str(n.numerator)
    return (str(n.numerator) if n.numerator != 1 else "") + "/" + str(n.denominator)


def score_to_abc(score) -> str:
    """A music21 score as a normalised ABC tune: the first part, a chord as its top note, notes quantised
    to sixteenths and triplet eighths, the first time signature (4/4 when none) and key signature (its
    major key; C when none).

    Raises:
        AigcError: the score holds no notes.
    """
    from music21 import key as m21key
    from music21 import meter as m21meter

    parts = list(score.parts) or [score]
    part = parts[0].quantize((4, 3), inPlace=False).makeNotation()
    ts = next(iter(part.recurse().getElementsByClass(m21meter.TimeSignature)), None)
    ks = next(iter(part.recurse().getElementsByClass(m21key.KeySignature)), None)
    meter = ts.ratioString if ts is not None else "4/4"
    key_name = ks.asKey("major").tonic.name.replace("-", "b") if ks is not None else "C"
    header = header_of({"M": meter, "K": key_name})
    unit = Fraction(default_unit(header.meter))
    key_alter = {p.step: int(p.alter) for p in (ks.alteredPitches if ks is not None else [])}
    bars, notes = [], 0
    for measure in part.getElementsByClass("Measure"):
        out, bar_alter = [], {}
        for el in measure.notesAndRests:
            length = _abc_length(Fraction(el.quarterLength).limit_denominator(48), unit)
            if el.isRest:
                out.append("z" + length)
                continue
            pitch = max(el.pitches) if el.isChord else el.pitch
            tie = "-" if el.tie is not None and el.tie.type in ("start", "continue") else ""
            out.append(_abc_pitch(pitch, key_alter, bar_alter) + length + tie)
            notes += 1
        if out:
            bars.append(_repeat_start(measure) + " ".join(out) + " " + _bar_line(measure))
    if not notes:
        raise AigcError("the score holds no notes")
    lines = [" ".join(bars[i:i + 4]) for i in range(0, len(bars), 4)]
    return header_text(header) + "\n".join(lines) + "\n"


def _repeat_start(measure) -> str:
    """``|:`` when a repeat starts with ``measure``."""
    left = measure.leftBarline
    return "|: " if left is not None and getattr(left, "direction", None) == "start" else ""


def _bar_line(measure) -> str:
    """The bar line after ``measure``: ``:|`` ending a repeat, ``|]`` the end, ``||`` a double bar, else ``|``."""
    right = measure.rightBarline
    if right is None:
        return "|"
    if getattr(right, "direction", None) == "end":
        return ":|"
    return {"final": "|]", "light-heavy": "|]", "double": "||", "light-light": "||"}.get(right.type, "|")


__all__ = ["bach_chorales", "COLLECTIONS", "MUSIC_SUFFIXES", "MusicCorpus", "TERMS", "music21_corpus", "read_music", "read_score",
           "score_to_abc"]
