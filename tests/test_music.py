"""Music as ABC text: the corpus reader, the tokenizer round trip, a tiny model's tune rendered to MIDI and
WAV, the metrics on hand-made tunes, and bad input (a malformed file, an empty MIDI file, a bad header,
an unknown output, no FluidSynth)."""

from __future__ import annotations

import os
import shutil
import wave
from fractions import Fraction
from pathlib import Path

import pytest

from aigc.data.abc import bars_of, meter_fit, normalise_tune, parse_header, split_tunes, syntax_problem
from aigc.data.music import music21_corpus, read_music
from aigc.errors import AigcError
from conftest import CORES, run_cli

# Four short tunes, written for these tests (jigs and a reel in D and G), with the kinds of lines the
# collections hold: titles, notes, chord symbols, decorations and comments, which normalising drops.
TUNES = """X:1
T:Test Jig One
R:Jig
M:6/8
L:1/8
K:D
A|"D"dfa afd|~e2c ABc|dfa agf|edc d2:|
|:f|gfe fed|ecA ABc|dfa agf|edc d2:|

X:2
T:Test Reel
N:made up for a test % a comment
M:4/4
K:G
|:GABc dBGB|c2ec d2BG|!trill!A2AB c2BA|GBAG FGAF:|

X:3
T:Test Jig Two
M:6/8
K:G
G|BAG GAB|c2A ABc|BAG GAB|AGF G2:|

X:4
T:Test Air
M:3/4
K:D
D2 F2 A2|d4 c2|B2 A2 F2|E6|D2 F2 A2|d4 e2|f2 e2 c2|d6|]
"""


@pytest.fixture(scope="session")
def tune_folder(tmp_path_factory) -> Path:
    """A folder of two ABC files: the four tunes above, and the same four under other numbers (dropped
    as duplicates)."""
    folder = tmp_path_factory.mktemp("tunes")
    (folder / "set.abc").write_text(TUNES, encoding="utf-8")
    (folder / "again.abc").write_text(TUNES.replace("X:", "X:1"), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def music_run(tmp_path_factory, tune_folder) -> Path:
    """A tiny GPT trained until it knows the four tunes by heart (greedy decoding gives one back)."""
    from aigc.config import load_config
    from aigc.train.loop import train

    tmp = tmp_path_factory.mktemp("music-run")
    cfg = tmp / "music.toml"
    cfg.write_text(f"""[data]
source = "{tune_folder}"
format = "music"
val_fraction = 0.01       # one tune held out: the last, the air
prepared_dir = "{tmp / 'prepared'}"
[model]
family = "gpt"
block_size = 64
n_layer = 2
n_head = 2
d_model = 48
[train]
out_dir = "{tmp / 'run'}"
batch_size = 8
max_steps = 250
lr = 1e-2
warmup_steps = 10
eval_interval = 250
eval_batches = 1
log_interval = 50
checkpoint_interval = 250
threads = {CORES}
[sample]
content = "abc"
temperature = 0
max_new_tokens = 200
""", encoding="utf-8")
    return train(load_config(cfg), progress=False)


# ---------------------------------------------------------------- corpus and tokenizer
def test_the_corpus_reader_normalises_real_tunes_and_splits_by_tune():
    oneill = music21_corpus() / "oneills1850" / "0001-0050.abc"
    corpus = read_music([oneill], progress=False)
    assert len(split_tunes(oneill.read_text(encoding="utf-8"))) == 50
    assert len(corpus.texts) + len(corpus.skipped) + corpus.duplicates == 50 and len(corpus.texts) >= 48
    first = corpus.texts[0]
    assert first.startswith("M:2/4\nK:Gm\n")  # title, book, notes, transcriber dropped; L:1/16 is 2/4's default
    assert "T:" not in first and '"' not in first and "{" not in first
    from aigc.data.shards import split_documents
    is_val = split_documents(len(corpus.texts), 0.2, 1234)
    again = split_documents(len(corpus.texts), 0.2, 1234)
    assert (is_val == again).all() and 0 < is_val.sum() < len(corpus.texts)  # whole tunes, the same each time


def test_a_tune_goes_through_the_tokenizer_byte_for_byte(music_run):
    import aigc
    tm = aigc.load(music_run)
    texts = [normalise_tune(t) for _, t in split_tunes(TUNES)]
    for text in texts:
        ids = tm.tokenizer.encode(text, "tune")
        assert tm.tokenizer.decode(ids) == text and len(ids) == len(text)  # one character a token


# ---------------------------------------------------------------- generation and rendering
def test_a_tiny_model_writes_a_tune_that_renders_to_midi_and_wav(music_run, tmp_path):
    out = run_cli("sample", str(music_run), "--prompt", "R:jig\\nM:6/8\\nK:D\\n", "--out", str(tmp_path / "t.mid"),
                  "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("R:jig\nM:6/8\nK:D\n")
    from music21 import converter
    midi = converter.parse(tmp_path / "t.mid")
    assert len(midi.flatten().notes) >= 8
    from aigc.generate.music import parse_tune, write_tune
    tune = parse_tune(out.stdout)
    if shutil.which("fluidsynth") is None:
        pytest.skip("FluidSynth is not installed (make music installs fluidsynth and fluid-soundfont-gm)")
    write_tune(tune, tmp_path / "t.wav", {"test": True})
    with wave.open(str(tmp_path / "t.wav"), "rb") as w:
        seconds = w.getnframes() / w.getframerate()
    assert tune.seconds <= seconds <= tune.seconds + 1.5  # the last note's release, cut half a second after
    write_tune(tune, tmp_path / "t.ogg", {"test": True})
    assert (tmp_path / "t.ogg").read_bytes()[:4] == b"OggS" and (tmp_path / "t.ogg").stat().st_size < (tmp_path / "t.wav").stat().st_size
    write_tune(tune, tmp_path / "t.png", {"test": True})
    from PIL import Image
    assert Image.open(tmp_path / "t.png").width > 100


# ---------------------------------------------------------------- metrics with known answers
def test_bar_lengths_find_a_bar_too_long_and_accept_pickups_and_section_ends():
    tune = "M:6/8\nK:D\nA|dfa afd|ecA ABcd|dfa agf|edc d2:|\n|:f|gfe fed|\n"
    bars = bars_of(tune)
    assert [b.length for b in bars[:3]] == [Fraction(1, 8), Fraction(3, 4), Fraction(7, 8)]
    assert meter_fit(tune) == (4, 5)  # the pickup is not counted; "ABcd" is one eighth too long; d2 + f fill one
    assert meter_fit("M:4/4\nK:G\n(3GAB c2 G>A B<c|d8|]\n") == (2, 2)  # a triplet, broken rhythm
    assert syntax_problem("dfa 2/ afd|") is not None and syntax_problem("dfa afd|") is None


def test_a_tune_in_c_major_keeps_entirely_to_its_key_and_histograms_overlap():
    from aigc.evaluate.music import BarIndex, music_metrics, tune_features
    c_major = "M:4/4\nK:C\nCDEF GABc|cBAG FEDC|EGce gecG|C8|]\n"
    chromatic = "M:4/4\nK:C\nC^CD^D E F^FG|^GA^AB c4|]\n"
    feats = tune_features(c_major)
    assert feats["in_key"] == feats["notes"] == 25
    assert tune_features(chromatic)["in_key"] < tune_features(chromatic)["notes"]
    out = music_metrics([c_major], [feats], BarIndex([c_major]))
    assert out["parse_share"] == 1 and out["in_key_share"] == 1 and out["meter_share"] == 1
    assert out["pitch_class_overlap"] == pytest.approx(1.0) and out["longest_copied_bars"] == 4
    other = music_metrics(["M:4/4\nK:C\nC^CD^D E F^FG|^GA^AB c4|]\n"], [feats], BarIndex(["M:4/4\nK:C\nz8|\n"]))
    assert other["pitch_class_overlap"] < 0.7 and other["longest_copied_bars"] == 0


# ---------------------------------------------------------------- bad input
def test_a_malformed_file_in_the_corpus_is_named_skipped_and_counted(tune_folder, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tune_folder, folder)
    (folder / "broken.abc").write_text("X:1\nT:No key\nM:6/8\nabc|\n\nX:2\nM:7/0\nK:D\nabc|\n", encoding="utf-8")
    (folder / "binary.mid").write_bytes(b"\x00\x01 not midi")
    corpus = read_music([folder], progress=False)
    assert len(corpus.texts) == 4 and corpus.duplicates == 4 and len(corpus.skipped) == 3
    report = corpus.report()
    assert "3 skipped" in report and "broken.abc:1: no K:" in report
    assert any("broken.abc:6: M:7/0" in s for s in corpus.skipped)
    assert any("binary.mid: not a readable MIDI file" in s for s in corpus.skipped)


def test_a_midi_file_with_no_notes_is_skipped_with_its_name(tmp_path):
    from music21 import meter, stream
    score = stream.Score([stream.Part([meter.TimeSignature("3/4")])])
    score.write("midi", fp=str(tmp_path / "silent.mid"))
    with pytest.raises(AigcError, match=r"silent\.mid.*no notes"):
        read_music([tmp_path / "silent.mid"], progress=False)


def test_bad_prompts_and_outputs_are_refused_before_any_tune_is_made(music_run, tmp_path, capsys):
    from aigc.cli import main
    assert main(["sample", str(music_run), "--prompt", "M:7/0\\nK:D\\n"]) == 2
    assert "M:7/0 is not an ABC meter" in capsys.readouterr().err
    assert main(["sample", str(music_run), "--prompt", "T:My tune\\nK:D\\n"]) == 2
    assert "field T: is not one" in capsys.readouterr().err
    assert main(["sample", str(music_run), "--prompt", "M:6/8\\nK:D\\n", "--out", str(tmp_path / "t.ogx")]) == 2
    err = capsys.readouterr().err
    assert "not .ogx" in err and ".mid" in err and not (tmp_path / "t.ogx").exists()
    with pytest.raises(AigcError, match="K:H# is not an ABC key"):
        parse_header("M:6/8\nK:H#\n")


def test_rendering_without_fluidsynth_names_the_debian_package(music_run, tmp_path, capsys, monkeypatch):
    from aigc.cli import main
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))  # a machine without fluidsynth on its PATH
    assert main(["sample", str(music_run), "--prompt", "M:6/8\\nK:D\\n", "--out", str(tmp_path / "t.wav")]) == 2
    assert "apt-get install fluidsynth fluid-soundfont-gm" in capsys.readouterr().err
    assert not (tmp_path / "t.wav").exists()


def test_the_music_route_returns_abc_midi_and_a_piano_roll(music_run, served_model_folders):
    import base64
    import io

    from fastapi.testclient import TestClient
    from music21 import converter

    import aigc
    from aigc.serve.app import create_app

    client = TestClient(create_app({"folk": aigc.load(music_run), "text": aigc.load(served_model_folders["text"])}))
    r = client.post("/v1/music", json={"model": "folk", "prompt": "R:jig\nM:6/8\nK:D\n", "seed": 3,
                                       "formats": ["mid", "png"]})
    assert r.status_code == 200, r.text
    tune = r.json()["data"][0]
    assert tune["parses"] and tune["abc"].startswith("R:jig\nM:6/8\nK:D\n") and tune["notes"] >= 8
    midi = converter.parseData(base64.b64decode(tune["mid_base64"]), format="midi")
    assert len(midi.flatten().notes) >= tune["notes"]  # repeats are played twice in the MIDI
    from PIL import Image
    assert Image.open(io.BytesIO(base64.b64decode(tune["png_base64"]))).format == "PNG"
    r = client.post("/v1/music", json={"model": "folk", "prompt": "M:13/0\nK:D\n"})
    assert r.status_code == 400 and "M:13/0" in r.json()["error"]["message"]
    r = client.post("/v1/music", json={"model": "text", "prompt": "M:6/8\nK:D\n"})
    assert r.status_code == 400 and "does not write music" in r.json()["error"]["message"]
    r = client.post("/v1/music", json={"model": "folk", "formats": ["ogg"]})
    assert r.status_code in (400, 422)
    r = client.post("/v1/music", json={"model": "folk", "format": ["wav"]})  # misspelt: named, not ignored
    assert r.status_code == 400 and r.json()["error"]["param"] == "format", r.text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (make test installs Debian's package)")
def test_the_page_plays_a_tune_and_shows_its_piano_roll(music_run, tmp_path):
    from playwright.sync_api import sync_playwright

    from conftest import start_server

    proc, url = start_server({"folk": music_run})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 1")
            assert page.text_content("#prompt-label").startswith("Tune header")
            assert not page.is_visible("#poem-row")  # no poem forms for a model of tunes
            page.fill("#prompt", "R:jig\nM:6/8\nK:D")
            page.fill("#seed", "3")
            page.click("#generate")
            page.wait_for_function("document.getElementById('text-stats').textContent.includes('notes')",
                                   timeout=60_000)
            assert page.text_content("#output").startswith("R:jig\nM:6/8\nK:D\n")
            assert page.is_visible("#tune-roll") and page.evaluate("document.getElementById('tune-roll').naturalWidth") > 100
            assert page.get_attribute("#tune-midi", "href").startswith("data:audio/midi;base64,")
            if shutil.which("fluidsynth"):
                assert page.get_attribute("#tune-audio", "src").startswith("data:audio/wav;base64,")
                assert page.evaluate("document.getElementById('tune-audio').readyState") >= 0
            page.screenshot(path=str(tmp_path / "tune.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_model_trained_on_folk_abc_carries_the_corpus_terms(tmp_path):
    from aigc.config import load_config
    from aigc.data.music import TERMS
    from aigc.data.sources import data_terms
    cfg = load_config(Path(__file__).parents[1] / "configs" / "folk-abc-gpt.toml")
    assert data_terms(cfg.data) == TERMS and "non-commercial" in TERMS
    from aigc.formats.model_folder import save_model_folder
    from aigc.models.lstm import LSTMConfig, LSTMLM
    save_model_folder(tmp_path / "m", LSTMLM(LSTMConfig(vocab_size=8, d_embed=4, d_hidden=4)), notice=TERMS)
    assert (tmp_path / "m" / "NOTICE.txt").read_text(encoding="utf-8") == TERMS + "\n"


def test_bach_chorales_become_their_soprano_melody_in_abc():
    from aigc.data.music import bach_chorales
    files = bach_chorales()
    assert len(files) == 370 and all(f.suffix in (".mxl", ".xml") for f in files)
    corpus = read_music(files[:3], progress=False, label="music21")
    assert len(corpus.texts) == 3 and not corpus.skipped
    for tune in corpus.texts:
        header, body = parse_header(tune)
        assert header.meter in ("3/4", "4/4") and header.key and syntax_problem(body) is None
        fit, bars = meter_fit(tune)
        assert bars >= 8 and fit >= 0.7 * bars  # phrase-end half bars without a repeat sign count against it
    assert ":|" in corpus.texts[0] and corpus.texts[0].rstrip().endswith("|]")  # the repeat and the final bar


def test_transposition_moves_every_note_by_the_interval_and_augments_only_the_train_tunes(tune_folder, tmp_path):
    from aigc.data.transpose import transpose_key, transpose_tune
    from aigc.generate.music import parse_tune
    jig = "R:jig\nM:6/8\nK:D\nA|dfa afd|ecA ABc|d^fa =f2g|edc d2:|\n"
    for k in (2, -1, 5, -12):
        moved = transpose_tune(jig, k)
        before, after = parse_tune(jig).score.flatten().notes, parse_tune(moved).score.flatten().notes
        assert [b.pitch.midi - a.pitch.midi for a, b in zip(before, after)] == [k] * len(before)
    assert transpose_tune(jig, 2).startswith("R:jig\nM:6/8\nK:E\nB|egb")
    assert transpose_key("D", -1) == "Db" and transpose_key("Ador", 2) == "Bdor"
    from aigc.config import DataConfig
    from aigc.data.shards import TokenData, prepare
    plain = TokenData(prepare(DataConfig(source=str(tune_folder), format="music", val_fraction=0.01),
                              tmp_path / "plain", progress=False))
    more = TokenData(prepare(DataConfig(source=str(tune_folder), format="music", val_fraction=0.01, transpose=[-2, 2]),
                             tmp_path / "more", progress=False))
    assert more.splits["val"].size == plain.splits["val"].size  # the held-out tune stays as it was
    assert more.splits["train"].size > 2.5 * plain.splits["train"].size
    with pytest.raises(AigcError, match="data.transpose applies to music"):
        prepare(DataConfig(source=str(tune_folder / "set.abc"), format="txt", transpose=[2]), tmp_path / "t",
                progress=False)


def test_data_list_names_the_music_datasets_and_their_terms(capsys):
    from aigc.cli import main
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "folk-abc       [ok] music" in out and "bach-chorales  [ok] music" in out
    assert "non-commercial use only" in out


# ---------------------------------------------------------------- hostile input (a review found these)
def test_a_tiny_midi_file_lasting_days_is_skipped_before_it_fills_memory(tmp_path):
    # 1 tick per quarter note, one note held 0x0FFFFFF ticks: 30 bytes that music21 would quantise into millions of bars
    track = bytes([0x00, 0x90, 60, 64, 0x87, 0xFF, 0xFF, 0x7F, 0x80, 60, 0, 0x00, 0xFF, 0x2F, 0x00])
    data = b"MThd" + (6).to_bytes(4, "big") + bytes([0, 0, 0, 1, 0, 1]) + b"MTrk" + len(track).to_bytes(4, "big") + track
    (tmp_path / "long.mid").write_bytes(data)
    with pytest.raises(AigcError, match=r"long\.mid: lasts [\d,]+ quarter notes; at most 20,000"):
        read_music([tmp_path / "long.mid"], progress=False)


def test_music21_hears_what_abc_means_and_long_tunes_are_refused_for_rendering():
    from aigc.data.transpose import augment
    from aigc.generate.music import midi_bytes, parse_tune
    pitches = lambda t: [n.nameWithOctave for n in parse_tune(t).score.flatten().notes]  # noqa: E731
    assert pitches("M:4/4\nK:C\n^F G F G|F2 G2|\n") == ["F#4", "G4", "F#4", "G4", "F4", "G4"]  # carried in the bar
    assert pitches("M:4/4\nK:C\nF2 G2|[K:G] F2 G2|\n") == ["F4", "G4", "F#4", "G4"]  # a key change mid-tune
    with pytest.raises(AigcError, match="tunes are rendered up to 600 s"):
        midi_bytes(parse_tune("M:4/4\nK:C\nA99999999|\n"))
    with pytest.raises(AigcError, match="too long to render"):
        parse_tune("M:4/4\nK:C\n" + "|:A|1B:|2c" * 100 + "\n")
    from music21 import converter
    played = lambda abc: len(converter.parseData(midi_bytes(parse_tune(abc)), format="midi").flatten().notes)  # noqa: E731
    assert played("M:4/4\nK:G\n|:ABcd|efga:|\n|:fedc|BAGF:|\n") == 32  # repeats played
    assert played("M:4/4\nK:G\nABcd|efga:|\nfedc|BAGF:|\n") == 32  # A A B B, not A A B A A B
    assert played("M:4/4\nK:G\n|:ABcd|efga::fedc|BAGF:|\n") == 32  # :: ends one repeat and starts the next
    unpaired = parse_tune("M:4/4\nK:G\n|:ABcd|efga:|\nBcde|\n|:fedc|BAGF||\n")  # the last |: is never closed
    assert played(unpaired.text) == 28 and unpaired.seconds == 7.0  # it is a plain bar; the first repeat still plays
    moved, skipped = augment(["M:4/4\nK:C\n__C D|\n", "M:4/4\nK:C\nC D|\n"], [1])
    assert skipped == 1 and moved == ["M:4/4\nK:Db\nD Eb|\n".replace("Eb", "E")]


def test_the_route_reports_a_tune_it_cannot_render_on_that_tune_alone(music_run):
    from fastapi.testclient import TestClient

    import aigc
    from aigc.serve.app import create_app

    client = TestClient(create_app({"folk": aigc.load(music_run)}))
    r = client.post("/v1/music", json={"prompt": "M:4/4\nK:G\nA66666666|", "max_tokens": 1, "n": 2,
                                       "formats": ["mid", "png"]})
    assert r.status_code == 200, r.text
    for tune in r.json()["data"]:
        assert tune["parses"] and "mid_base64" not in tune and "600 s" in tune["render_error"]["mid"]
    r = client.post("/v1/music", json={"prompt": "M:6/8\nK:D\n", "temperature": 500})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_careless_music_requests_get_a_clear_error(music_run, served_model_folders, tmp_path, capsys):
    from aigc.cli import main
    assert main(["sample", str(music_run), "--prompt", "M:6/8\\nK:D\\n\\nABc|"]) == 2
    assert "blank line" in capsys.readouterr().err
    assert main(["sample", str(music_run), "--n", "100000000", "--out", str(tmp_path / "t.mid")]) == 2
    assert "expected 1 to 1000 tunes" in capsys.readouterr().err
    assert main(["sample", str(served_model_folders["text"]), "--out", str(tmp_path / "t.mid")]) == 2
    assert "tunes come from a music model" in capsys.readouterr().err
    fifo = tmp_path / "x.abc"
    os.mkfifo(fifo)
    with pytest.raises(AigcError, match="not a regular file"):
        read_music([fifo], progress=False)
