"""Regulated verse: the shipped rhyme and tone tables, the four tonal templates of each form, and
the checker on real poems and on broken ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aigc.data.poetry import FORMS, check, form_named, line_pattern, poem_lines, repeated_characters, templates
from aigc.data.rhyme import PING, ZE, rhyme_tables
from aigc.errors import AigcError

from conftest import tang_documents

DATA = Path(__file__).resolve().parents[1] / "aigc" / "data" / "builtin"


def test_table_lookups_on_known_characters():
    t = rhyme_tables()
    assert len(t.groups) == 106 and t.groups["一东"] == PING and t.groups["一屋"] == "入"
    assert "一东" in t.shi_groups("东") and t.tones("东") == {PING}
    assert t.tones("十") == {ZE} and t.shi_groups("十") == {"十四缉"}  # 入声, though Mandarin shí is the second tone
    assert t.tones("白") == {ZE} and t.tones("一") == {ZE}
    assert {"十四寒", "十五翰"} <= t.shi_groups("看") and t.tones("看") == {PING, ZE}  # a 多音字 in two groups
    assert {"七阳", "八庚"} <= t.shi_groups("行")
    assert t.ci_rhyme_with("东", "第一部平") and t.ci_rhyme_with("十", "第十七部仄")
    assert not t.knows("A") and t.tones("A") == set()


def test_templates_keep_dui_and_nian_and_rhyme_on_ping():
    for form in FORMS.values():
        temps = templates(form)
        assert len(temps) == 4
        for name, tones in temps.items():
            assert len(tones) == form.lines and all(len(t) == form.chars for t in tones)
            second = [t[1] for t in tones]
            for k in range(0, form.lines, 2):
                assert second[k] != second[k + 1], (name, "对")  # the couplet's lines answer each other
                if k + 2 < form.lines:
                    assert second[k + 1] == second[k + 2], (name, "粘")  # the next couplet sticks to it
                assert tones[k + 1][-1] == PING  # even lines end on the rhyme, a 平 character
            assert (tones[0][-1] == PING) == ("首句入韵" in name)
            assert name.startswith(second[0])
    assert templates(form_named("五绝"))["仄起首句不入韵"] == ["仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平"]
    assert line_pattern("A", 7) == "平平仄仄平平仄"


def test_the_checker_passes_real_regulated_verse():
    v = check("登鹳雀楼\n白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。", "五言绝句")
    assert v.ok and v.group == "十一尤" and v.template == "仄起首句不入韵", v
    spring = "春望\n国破山河在，城春草木深。\n感时花溅泪，恨别鸟惊心。\n烽火连三月，家书抵万金。\n白头搔更短，浑欲不胜簪。"
    v = check(spring, "五律")
    assert v.form_ok and v.rhyme_ok and v.group == "十二侵" and v.tone == 1.0, v
    # over the shipped corpus, poems of the right shape mostly keep rhyme and tone (古体 ones need not)
    shaped = [d for d in tang_documents(3000) if len(poem_lines(d)[1]) == 4
              and all(len(x) == 7 for x in poem_lines(d)[1])]
    verdicts = [check(d, "七绝") for d in shaped]
    assert len(verdicts) > 100 and sum(v.rhyme_ok for v in verdicts) / len(verdicts) > 0.8
    assert sum(v.tone for v in verdicts) / len(verdicts) > 0.85


def test_the_checker_names_what_is_wrong():
    v = check("白日依山尽，黄河入海流。\n欲穷千里，更上一层楼。", "五绝")
    assert not v.form_ok and "line 3 not 5 characters" in v.problems[0]
    v = check("白日依山尽，黄河入海流。", "五绝")
    assert not v.form_ok and "2 lines; 五言绝句 has 4" in v.problems[0]
    v = check("白日依山尽，黄河入海流。\n欲穷千里目，更上一层东。", "五绝")  # 流 and 东: no common group
    assert v.form_ok and not v.rhyme_ok and "流东" in v.problems[0]
    v = check("白日依山尽。黄河入海流，欲穷千里目，更上一层楼。", "五绝")
    assert not v.form_ok and "punctuation" in v.problems[0]
    with pytest.raises(AigcError, match="form '六绝': expected one of 五言绝句"):
        form_named("六绝")


# ---------------------------------------------------------------- constrained generation (tang-base)
@pytest.fixture(scope="module")
def tang():
    import aigc

    return aigc.load("tang-base")


@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_comes_out_exact_in_lengths_punctuation_rhyme_and_tone(tang, form):
    from aigc.generate.poem import write_poems

    poems = write_poems(tang, "秋天的落叶", form, n=1, seed=11)
    for p in poems:
        title, lines, marks = poem_lines(p["text"])
        assert title == "秋天的落叶" and p["verdict"].ok, (p["text"], p["verdict"].problems)
        assert len(lines) == FORMS[form].lines and all(len(x) == FORMS[form].chars for x in lines)
    strict = write_poems(tang, "春风", "五绝", n=1, seed=3, lenient=False)[0]
    assert check(strict["text"], "五绝", lenient=False).ok, strict["text"]


def test_acrostic_no_copied_lines_and_reranking(tang):
    from aigc.generate.poem import shipped_lines, write_poems

    poems = write_poems(tang, "秋 落叶", "七绝", n=3, seed=4, acrostic="秋天落叶", forbidden=shipped_lines(7))
    for p in poems:
        _, lines, _ = poem_lines(p["text"])
        assert "".join(x[0] for x in lines) == "秋天落叶" and p["verdict"].ok
    scores = [p["score"] for p in poems]
    assert scores == sorted(scores, reverse=True)  # best first
    body = poems[0]["text"].split("\n", 1)[1]
    scored = tang.score(poems[0]["text"])[-len(body):]
    chars = [e.logprob for e in scored if e.token != tang.tokenizer.encode("\n")[0]]
    assert scores[0] == pytest.approx(sum(chars) / len(chars), abs=1e-4)  # the model's own mean log-likelihood
    # a line the model would write is refused once it is a "training line", and another is written instead
    first = poem_lines(write_poems(tang, "春", "五绝", n=1, seed=9)[0]["text"])[1][0]
    again = poem_lines(write_poems(tang, "春", "五绝", n=1, seed=9, forbidden={first[:-1]: {first[-1]}})[0]["text"])[1]
    assert first not in again
    shipped = shipped_lines(7)
    for p in poems:
        assert not any(x[-1] in shipped.get(x[:-1], ()) for x in poem_lines(p["text"])[1])


def test_no_character_twice_unless_a_reduplication_or_asked(tang):
    from aigc.generate.poem import write_poems

    assert repeated_characters("题\n萧萧梧叶送寒声，江上秋风动客情。") == []  # 叶绍翁's 叠字
    assert repeated_characters("题\n萧萧萧叶送寒声，江上秋风动叶情。") == ["萧", "叶"]
    poems = write_poems(tang, "秋天的落叶", "七律", n=4, seed=0) + write_poems(tang, "春", "鹧鸪天", n=2, seed=1)
    poems += write_poems(tang, "月", "五绝", n=2, seed=2, acrostic="花月")
    assert all(repeated_characters(p["text"]) == [] and p["verdict"].ok for p in poems), [p["text"] for p in poems]
    loose = write_poems(tang, "秋天的落叶", "七律", n=4, seed=0, repeats=True)
    assert any(repeated_characters(p["text"]) for p in loose)  # the model does repeat when let (seed 0: 落花...落花)


def test_poem_bad_input(tang, capsys):
    from aigc.cli import main
    from aigc.generate.poem import write_poems

    with pytest.raises(AigcError, match="acrostic character '𠀋' is not in the model's vocabulary"):
        write_poems(tang, "春", "五绝", acrostic="春𠀋秋冬")
    with pytest.raises(AigcError, match="5 characters; a 五言绝句 has 4 lines"):
        write_poems(tang, "春", "五绝", acrostic="春夏秋冬雪")
    with pytest.raises(AigcError, match="theme of 120 characters: with a 七言律诗 it needs 190 tokens; the model's context is 128"):
        write_poems(tang, "春" * 120, "七律")
    with pytest.raises(AigcError, match="theme of 300 characters: with a 七言绝句 it needs 336 tokens"):  # counted whole, not cropped
        write_poems(tang, "秋" * 300, "七绝")
    with pytest.raises(AigcError, match="no tonal template of the 五言绝句 fits"):
        write_poems(tang, "春", "五绝", acrostic="一十白月", lenient=False)  # all 仄 first characters, strict
    for args, message in [(["--theme", "春", "--form", "六绝"], "form '六绝': expected one of"),
                          (["--theme", "春", "--n", "0"], "--n 0"), (["--theme", "春\n夏"], "--theme: expected one line"),
                          (["--theme", "春", "--acrostic", "春夏秋冬x"], "5 characters; a 七言绝句 has 4 lines")]:
        code = main(["poem", "tang-base", *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_instructions_are_parsed_for_form_theme_and_acrostic():
    from aigc.data.poetry import parse_instruction

    assert parse_instruction("写一首关于秋天的七言绝句") == {"form": "七言绝句", "theme": "秋天", "acrostic": ""}
    assert parse_instruction("以“春风”为题写一首藏头诗") == {"form": "七言绝句", "theme": "春风", "acrostic": "春风"}
    assert parse_instruction("写一首五律，藏头：春夏秋冬") == {"form": "五言律诗", "theme": "春夏秋冬", "acrostic": "春夏秋冬"}
    assert parse_instruction("写一首藏头诗，藏头为春夏秋冬")["acrostic"] == "春夏秋冬"
    assert parse_instruction("请写一首咏梅的五绝") == {"form": "五言绝句", "theme": "梅", "acrostic": ""}
    assert parse_instruction("以明月为题写一首律诗")["form"] == "七言律诗"
    assert parse_instruction("今天天气怎么样") is None and parse_instruction("写一首诗") is None


def test_the_server_and_chat_keep_the_form_asked_for(tang):
    from fastapi.testclient import TestClient

    from aigc.serve.app import create_app

    c = TestClient(create_app({"poems": tang}))
    r = c.post("/v1/poems", json={"model": "poems", "theme": "秋天的落叶", "form": "五律", "n": 2, "seed": 1})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and all(d["form_ok"] and d["rhyme_ok"] and d["tone"] == 1.0 for d in data)
    assert data[0]["score"] >= data[1]["score"] and check(data[0]["text"], "五律").ok
    assert all(repeated_characters(d["text"]) == [] for d in data)
    r = c.post("/v1/poems", json={"model": "poems", "theme": "秋天的落叶", "form": "七律", "n": 4, "seed": 0,
                                  "repeats": True})  # the model repeats when let (as in the test above)
    assert r.status_code == 200 and any(repeated_characters(d["text"]) for d in r.json()["data"]), r.text
    r = c.post("/v1/chat/completions", json={"model": "poems", "seed": 2, "messages": [
        {"role": "user", "content": "以“春风”为题写一首藏头诗"}]})
    poem = r.json()["choices"][0]["message"]["content"]
    assert check(poem, "七绝").ok and [x[0] for x in poem_lines(poem)[1][:2]] == ["春", "风"], poem
    for bad, param in (({"form": "六绝"}, "form"), ({"acrostic": "春𠀋"}, "acrostic"), ({"theme": "春𠀋"}, "theme"),
                       ({"theme": "秋" * 120}, "theme"),  # longer than the context leaves: refused before it is queued
                       ({"tunes": "西江月"}, "tunes"), ({"": 1}, "")):
        r = c.post("/v1/poems", json={"model": "poems", "theme": "秋", **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    out = subprocess.run([sys.executable, "-m", "aigc", "chat", "tang-base", "--seed", "3", "--threads", "1"],
                         input="写一首关于秋天的五言绝句\n", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    reply = out.stdout.split("\n", 1)[1].strip()
    assert reply.startswith("秋天\n") and check(reply, "五绝").ok and "keeps the rules" in out.stderr


def test_ci_tunes_come_from_the_song_ci_and_a_ci_keeps_its_tune(tang):
    import json as _json

    from aigc.data.poetry import check_ci, tune_named, tunes
    from aigc.generate.poem import forbidden_lines, write_poems

    known = tunes()
    assert len(known) >= 20 and list(known)[0] == "浣溪沙"
    xjy = tune_named("西江月")
    assert [x["chars"] for x in xjy.lines] == [6, 6, 7, 6, 6, 6, 7, 6] and xjy.follow > 400
    real = [_json.loads(line)["text"] for line in open(DATA / "xin-qiji-ci.jsonl", encoding="utf-8")]
    real = [t for t in real if t.startswith("西江月\n")]
    assert sum(check_ci(t, xjy).form_ok for t in real) / len(real) > 0.75  # Xin Qiji wrote to the pattern
    ci = write_poems(tang, "秋天的落叶", xjy, n=1, seed=3, forbidden=forbidden_lines(xjy))[0]
    assert ci["text"].startswith("西江月·秋天的落叶\n") and ci["verdict"].ok, (ci["text"], ci["verdict"].problems)
    with pytest.raises(AigcError, match="tune '西江风': not one of the 30 known tunes: 浣溪沙, 水调歌头"):
        tune_named("西江风")


def test_a_form_and_a_tune_together_are_refused(capsys):
    from aigc.cli import main

    assert main(["poem", "tang-base", "--theme", "秋", "--form", "七绝", "--tune", "西江月"]) == 2
    assert "--form and --tune: give one" in capsys.readouterr().err
