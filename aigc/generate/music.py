"""Tunes a music model wrote, made into things a person can hear and see: ABC text checked and
parsed with music21, MIDI (music21), WAV (FluidSynth from Debian with a General MIDI soundfont),
and a piano-roll PNG (with provenance and signed C2PA credentials, like every PNG aigc writes).

A tune that does not parse is an :class:`AigcError` naming why; nothing is written for it.
"""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from aigc.atomic import write_bytes
from aigc.config import SampleConfig
from aigc.data.abc import FIELD, normalise_tune, parse_header, syntax_problem
from aigc.data.transpose import NOTE_TOKEN, signature
from aigc.errors import AigcError
from aigc.formats.credentials import sign_png
from aigc.generate.images import provenance

MUSIC_OUTPUTS = (".abc", ".mid", ".wav", ".ogg", ".png")
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
              "/usr/share/sounds/sf2/TimGM6mb.sf2")
SAMPLE_RATE = 22050  # Hz, mono 16-bit: enough for a melody, half the size of CD audio
TEMPO = 120  # quarter notes per minute when a tune names none (music21's MIDI default)
MAX_SECONDS = 600  # longest tune rendered (MIDI, audio, piano roll): ten minutes is 26 MB of WAV
MAX_BODY = 6000  # characters of a tune body parsed by music21 (its time grows faster than the length)
MAX_REPEATS = 64  # repeat signs and endings (music21's expansion of repeats is quadratic in them)
REPEATS = re.compile(r":\||\|:|::|\|[12]|\[[12]")


@dataclass
class Tune:
    """A parsed tune: its normalised ABC text and the music21 score.

    Attributes:
        text: the normalised ABC (header and body).
        score: the music21 Score (one part).
        notes: how many notes it holds; seconds: its length at :data:`TEMPO` with repeats played (as in
            its MIDI and WAV).
    """

    text: str
    score: object
    notes: int
    seconds: float


def parse_tune(text: str) -> Tune:
    """A tune as written by a model (prompt and continuation), checked and parsed.

    Raises:
        AigcError: the header or body is not ABC (:func:`aigc.data.abc.normalise_tune`,
            :func:`aigc.data.abc.syntax_problem`), music21 cannot parse it, or it holds no notes.
    """
    from music21 import converter, meter

    norm = normalise_tune(text if text.lstrip().startswith("X:") else "X:1\n" + text, "the tune")
    header, body = parse_header(norm, "the tune")
    problem = syntax_problem(body)
    if problem:
        raise AigcError(f"the tune is not well-formed ABC: {problem}")
    if len(body) > MAX_BODY or len(REPEATS.findall(body)) > MAX_REPEATS:
        raise AigcError(f"the tune is too long to render ({len(body):,} characters, {len(REPEATS.findall(body))} "
                        f"repeat signs and endings; at most {MAX_BODY:,} and {MAX_REPEATS})")
    try:
        score = converter.parse(norm[:len(norm) - len(body)] + for_music21(pair_repeats(body), header.key),
                                format="abc")
    except Exception as e:  # noqa: BLE001  music21's ABC parser raises many kinds
        raise AigcError(f"the tune does not parse as ABC ({type(e).__name__}: {str(e)[:120]})") from None
    seen = set()
    try:
        for measure in list(score.recurse().getElementsByClass("Measure")):
            for ts in list(measure.getElementsByClass(meter.TimeSignature)):
                if id(ts) in seen:  # measures sharing one TimeSignature object break music21's MIDI writer
                    measure.replace(ts, copy.deepcopy(ts))
                seen.add(id(ts))
        notes = len(score.flatten().notes)
    except Exception as e:  # noqa: BLE001
        raise AigcError(f"the tune does not parse as ABC ({type(e).__name__}: {str(e)[:120]})") from None
    if not notes:
        raise AigcError("the tune holds no notes")
    try:
        quarters = float(score.expandRepeats().highestTime)  # as MIDI plays it: repeats played twice
    except Exception:  # noqa: BLE001  unbalanced repeat signs (|: never closed ...): played as written
        score = _without_repeats(score)
        quarters = float(score.highestTime)
    return Tune(norm, score, notes, quarters * 60.0 / TEMPO)


def _without_repeats(score):
    """``score`` with its repeat signs made plain bar lines and its first/second endings dropped, as a
    player reads a tune whose repeats do not pair up (music21's MIDI writer refuses them)."""
    from music21 import bar, spanner

    for measure in score.recurse().getElementsByClass("Measure"):
        if isinstance(measure.leftBarline, bar.Repeat):
            measure.leftBarline = None
        if isinstance(measure.rightBarline, bar.Repeat):
            measure.rightBarline = bar.Barline("regular")
    for ending in list(score.recurse().getElementsByClass(spanner.RepeatBracket)):
        score.remove(ending, recurse=True)
    return score


BAR = re.compile(r"\[?:*\|[|\]]*:*|:{2,}")  # a bar line (|, ||, |], [|) with its repeat colons, or ::


def pair_repeats(body: str) -> str:
    """A tune body with its repeat signs paired as players read them, for music21 (which reads ``::`` and
    ``:|:`` not at all, and sends every ``:|`` without its ``|:`` back to the start of the tune): ``::``,
    ``:|:`` are written ``:||:``; a ``:|`` with no ``|:`` open repeats from the previous ``:|`` (A A B B,
    not A A B A A B), or from the start when there is none; a ``|:`` never closed (or opened again
    before its ``:|``) becomes a plain bar line, so the repeats that do pair still play."""
    bars = list(BAR.finditer(body))
    text = [m.group(0) for m in bars]
    opened = last_end = None
    for i, bar in enumerate(text):
        starts, ends = bar.endswith(":"), bar.lstrip("[").startswith(":")
        if starts and ends:
            text[i] = ":||:"
        if ends:
            if opened is None and last_end is not None:  # a second part: it repeats from the last :|
                text[last_end] = ":||:"
            opened, last_end = None, i
        if starts:
            if opened is not None:  # opened again before it closed: the earlier one is a plain bar
                text[opened] = text[opened].rstrip(":") or "|"
            opened = i
    if opened is not None:
        text[opened] = text[opened].rstrip(":") or "|"
    out, at = [], 0
    for m, new in zip(bars, text):
        out += [body[at:m.start()], new]
        at = m.end()
    return "".join(out) + body[at:]


def for_music21(body: str, key: str) -> str:
    """A normalised tune body as music21 reads it right: an accidental carried through its bar (ABC 2.1; music21
    applies it to one note) written on every later note of that pitch and octave in the bar, and a
    mid-tune ``[K:]`` ``[L:]`` ``[M:]`` put on a line of its own (music21 ignores inline fields)."""
    sig = signature(key) or {}
    bar: dict[tuple[str, int], str] = {}

    def one(m: re.Match) -> str:
        nonlocal sig
        if m.group(1):  # an inline field
            if m.group(1)[1] == "K":
                sig = signature(m.group(1)[3:-1].strip()) or {}
                bar.clear()
            return "\n" + m.group(1)[1:-1] + "\n"
        if m.group(5):
            bar.clear()
            return m.group(0)
        marks, char, octs = m.group(2), m.group(3), m.group(4)
        place = (char, octs)
        if marks:
            bar[place] = marks
            return m.group(0)
        return bar.get(place, "") + char + octs if place in bar else m.group(0)

    out = NOTE_TOKEN.sub(one, body)
    return "\n".join(line for line in out.split("\n") if line.strip()) + "\n"


def midi_bytes(tune: Tune) -> bytes:
    """The tune as a standard MIDI file (one track, piano, :data:`TEMPO`).

    Raises:
        AigcError: music21 cannot write it (its reason).
    """
    from music21 import midi

    _check_length(tune)
    try:
        mf = midi.translate.streamToMidiFile(tune.score)
        return mf.writestr()
    except Exception as e:  # noqa: BLE001
        raise AigcError(f"the tune cannot be written as MIDI ({type(e).__name__}: {str(e)[:120]})") from None


def soundfont() -> Path:
    """The General MIDI soundfont to render with: ``AIGC_SOUNDFONT``, else Debian's.

    Raises:
        AigcError: FluidSynth or a soundfont is missing, naming the Debian packages.
    """
    if shutil.which("fluidsynth") is None:
        raise AigcError("rendering audio needs FluidSynth: apt-get install fluidsynth fluid-soundfont-gm "
                        "(or `make music`); MIDI (--out tune.mid) needs neither")
    chosen = os.environ.get("AIGC_SOUNDFONT")
    for path in ([chosen] if chosen else SOUNDFONTS):
        if Path(path).is_file():
            return Path(path)
    raise AigcError(f"no General MIDI soundfont at {chosen or SOUNDFONTS[0]}: apt-get install fluid-soundfont-gm, "
                    "or set AIGC_SOUNDFONT to a .sf2 file")


def _check_length(tune: Tune) -> None:
    """Raise AigcError for a tune longer than :data:`MAX_SECONDS` (its MIDI would not even be valid)."""
    if tune.seconds > MAX_SECONDS:
        raise AigcError(f"the tune lasts {tune.seconds:,.0f} s; tunes are rendered up to {MAX_SECONDS} s")


def _fluidsynth(tune: Tune, suffix: str, timeout: float) -> bytes:
    """The tune rendered by FluidSynth to a file of type ``suffix`` (``.wav``, or ``.ogg``: Ogg Vorbis);
    its bytes.

    Raises:
        AigcError: FluidSynth or the soundfont is missing (:func:`soundfont`), the tune lasts longer than
            :data:`MAX_SECONDS`, or FluidSynth fails or runs past ``timeout`` seconds.
    """
    font = soundfont()
    _check_length(tune)
    with tempfile.TemporaryDirectory(prefix="aigc-render-") as tmp:
        mid, audio = Path(tmp) / "tune.mid", Path(tmp) / f"tune{suffix}"
        mid.write_bytes(midi_bytes(tune))
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.8", "-r", str(SAMPLE_RATE), "-T", "oga" if suffix == ".ogg" else "wav",
               "-F", str(audio), str(font), str(mid)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise AigcError(f"FluidSynth did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0 or not audio.is_file():
            raise AigcError(f"FluidSynth failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
        return audio.read_bytes()


def wav_bytes(tune: Tune, timeout: float = 120.0) -> bytes:
    """The tune rendered to audio: mono 16-bit WAV at :data:`SAMPLE_RATE`, the soundfont's silent tail cut
    half a second after the last sound.

    Raises:
        AigcError: as :func:`_fluidsynth`.
    """
    with wave.open(io.BytesIO(_fluidsynth(tune, ".wav", timeout)), "rb") as w:
        channels, rate = w.getnchannels(), w.getframerate()
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, channels)
    mono = frames.astype(np.int32).mean(axis=1)
    loud = np.flatnonzero(np.abs(mono) > 64)
    end = min(len(mono), (loud[-1] if len(loud) else 0) + rate // 2)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(mono[:end], -32768, 32767).astype(np.int16).tobytes())
    return out.getvalue()


def ogg_bytes(tune: Tune, timeout: float = 120.0) -> bytes:
    """The tune rendered to compressed audio, Ogg Vorbis at :data:`SAMPLE_RATE` (a fifth of the WAV's size;
    the soundfont's release tail is kept).

    Raises:
        AigcError: as :func:`_fluidsynth`.
    """
    return _fluidsynth(tune, ".ogg", timeout)


def piano_roll(tune: Tune, info: dict, px_per_quarter: int = 24, px_per_semitone: int = 6) -> bytes:
    """A piano-roll PNG of the tune: time to the right (a quarter note is ``px_per_quarter`` pixels, bar
    lines in grey), pitch upwards (a semitone is ``px_per_semitone`` pixels, C rows shaded), with
    provenance chunks for ``info`` and signed C2PA credentials."""
    _check_length(tune)
    notes = [(float(n.offset), float(n.quarterLength), p.midi) for n in tune.score.flatten().notes for p in n.pitches]
    low, high = min(m for _, _, m in notes) - 2, max(m for _, _, m in notes) + 2
    width = int(max(o + d for o, d, _ in notes) * px_per_quarter) + 20
    height = (high - low + 1) * px_per_semitone + 20
    img = Image.new("RGB", (min(width, 8000), height), "white")
    draw = ImageDraw.Draw(img)
    for m in range(low, high + 1):
        if m % 12 == 0:  # C rows
            y = 10 + (high - m) * px_per_semitone
            draw.rectangle([0, y, img.width, y + px_per_semitone - 1], fill=(238, 238, 245))
    for measure in tune.score.parts[0].getElementsByClass("Measure") if tune.score.parts else []:
        x = 10 + int(float(measure.offset) * px_per_quarter)
        draw.line([x, 0, x, height], fill=(200, 200, 200))
    for offset, length, m in notes:
        x0 = 10 + int(offset * px_per_quarter)
        y0 = 10 + (high - m) * px_per_semitone
        draw.rectangle([x0, y0, max(x0 + 2, x0 + int(length * px_per_quarter) - 2), y0 + px_per_semitone - 1],
                       fill=(40, 90, 170), outline=(20, 40, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=provenance(info))
    return sign_png(buf.getvalue(), info)


def write_tune(tune: Tune, path: Path, info: dict) -> Path:
    """Write ``tune`` to ``path`` by its suffix (.abc text, .mid, .wav, .ogg, .png piano roll), atomically.

    Raises:
        AigcError: an unknown suffix (the known ones named), or rendering fails.
    """
    suffix = path.suffix.lower()
    if suffix not in MUSIC_OUTPUTS:
        raise AigcError(f"{path}: a tune is written as {', '.join(MUSIC_OUTPUTS)}; not {suffix or 'no suffix'}")
    data = {".abc": lambda: tune.text.encode("utf-8"), ".mid": lambda: midi_bytes(tune),
            ".wav": lambda: wav_bytes(tune), ".ogg": lambda: ogg_bytes(tune),
            ".png": lambda: piano_roll(tune, info)}[suffix]()
    write_bytes(path, data)
    return path


def tune_prompt(prompt: str) -> str:
    """A prompt for a music model, checked: empty, or a tune's header (``M:6/8\nK:D\n``, fields R: M: L: K:)
    and perhaps the start of its body. ``\\n`` typed on a command line counts as a newline, and a last
    header line gets its newline.

    Raises:
        AigcError: an unknown header field, a field twice, or a value ABC does not allow (named).
    """
    prompt = prompt.replace("\\n", "\n")
    if "\n\n" in prompt.strip("\n") or prompt.startswith("\n"):
        raise AigcError("prompt: holds a blank line, which ends a tune in ABC; give one tune's header and start")
    last = prompt.rsplit("\n", 1)[-1]
    if last and FIELD.match(last):
        prompt += "\n"
    if prompt.strip():
        header, _ = parse_header(prompt, "prompt")
        if header is None:
            raise AigcError(f"prompt {prompt[:40]!r}: a tune starts with its header, e.g. 'M:6/8\\nK:D\\n' "
                            "(fields R: M: L: K:)")
    return prompt


def compose(tm, prompt: str, n: int = 1, seed: int | None = None, settings: SampleConfig | None = None) -> list[dict]:
    """``n`` tunes from a music model after ``prompt`` (:func:`tune_prompt`), each checked.

    Returns:
        one dict per tune: ``abc`` (the text: normalised when it parses, as written when not), ``tune``
        (:class:`Tune`, or None), ``error`` (why it does not parse, or None), ``seed``.
    Raises:
        AigcError: a bad prompt or setting.
    """
    prompt = tune_prompt(prompt)
    settings = tm.settings(settings, stop=list({*(settings or tm.defaults).stop, "\n\n"}))  # a blank line ends a tune
    out = []
    for i in range(n):  # one at a time: tune i is the same for seed + i whatever n is
        one = None if seed is None else seed + i
        text = tm.generate(prompt, n=1, seed=one, settings=settings)[0]
        try:
            tune = parse_tune(text)
            out.append({"abc": tune.text, "tune": tune, "error": None, "seed": one})
        except AigcError as e:
            out.append({"abc": text, "tune": None, "error": str(e), "seed": one})
    return out


__all__ = ["MUSIC_OUTPUTS", "Tune", "compose", "tune_prompt", "midi_bytes", "ogg_bytes", "parse_tune", "piano_roll", "soundfont", "wav_bytes", "write_tune"]
