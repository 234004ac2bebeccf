"""Regulated verse: the shipped rhyme and tone tables, the four tonal templates of each form, and
the checker on real poems and on broken ones."""

from __future__ import annotations

import pytest

from aigc.data.poetry import FORMS, check, form_named, line_pattern, poem_lines, templates
from aigc.data.rhyme import PING, ZE, rhyme_tables
from aigc.errors import AigcError

from conftest import tang_documents


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
