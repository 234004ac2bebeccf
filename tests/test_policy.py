"""The server's content policy (`aigc serve --policy`): refused prompts answer an OpenAI-shaped 400,
outputs that turn bad are cut with finish_reason "content_filter" (streamed and not), refusals are
counted in /metrics and logged without their text, and a bad policy file is refused."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

import aigc
from aigc.errors import AigcError
from aigc.serve.app import create_app
from aigc.serve.policy import OutputFilter, load_policy

POLICY = """
[[rule]]
reason = "no_autumn"
patterns = ['秋']
applies_to = ["prompt"]

[[rule]]
reason = "no_commas"
patterns = ['，']
applies_to = ["output"]

[[hook]]
call = "test_policy:shouting"
"""


async def asynchronous(text: str, where: str):
    return None


def shouting(text: str, where: str):
    """A classifier hook: refuses prompts in capitals, raises on a prompt asking it to."""
    if "BREAK THE HOOK" in text:
        raise RuntimeError("classifier down")
    return "shouting" if where == "prompt" and text.isupper() else None


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(POLICY, encoding="utf-8")
    tm = aigc.load("tang-base")
    return TestClient(create_app({"poems": tm}, policy=load_policy(path))), TestClient(create_app({"poems": tm}))


def test_refused_prompts_get_an_openai_shaped_400_counted_and_logged_without_text(client, caplog):
    c, _ = client
    caplog.set_level(logging.WARNING, "aigc.policy")
    for route, body, param, reason in [
        ("/v1/completions", {"prompt": "秋风起", "max_tokens": 5}, "prompt", "no_autumn"),
        ("/v1/completions", {"prompt": "秋风起", "max_tokens": 5, "stream": True}, "prompt", "no_autumn"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "写秋天"}]}, "messages", "no_autumn"),
        ("/v1/completions", {"prompt": "SPRING RAIN", "max_tokens": 5}, "prompt", "shouting"),
        ("/v1/completions", {"prompt": "BREAK THE HOOK", "max_tokens": 5}, "prompt", "policy_error"),
    ]:
        r = c.post(route, json={"model": "poems", **body})
        err = r.json()["error"]
        assert r.status_code == 400 and err["code"] == "content_policy_violation" and err["param"] == param, r.text
        assert f"reason: {reason}" in err["message"] and err["type"] == "invalid_request_error"
    assert c.post("/v1/completions", json={"model": "poems", "prompt": "春", "max_tokens": 2}).status_code == 200
    metrics = c.get("/metrics").text
    assert 'aigc_policy_refusals_total{reason="no_autumn",where="prompt"} 3.0' in metrics
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "no_autumn" in logged and "秋风起" not in logged and "写秋天" not in logged


def test_an_output_that_turns_bad_is_cut_with_content_filter(client):
    c, plain = client
    body = {"model": "poems", "prompt": "春", "max_tokens": 40, "seed": 3, "temperature": 0.8}
    full = plain.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert "，" in full  # without the policy the poem has its comma
    choice = c.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["text"] == full[:full.index("，")]

    with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert "".join(ch["text"] for ch in chunks) == full[:full.index("，")]
    assert chunks[-1]["finish_reason"] == "content_filter"
    assert 'aigc_policy_refusals_total{reason="no_commas",where="output"} 2.0' in c.get("/metrics").text
    r = c.post("/v1/completions", json={**body, "logprobs": 2})  # they would spell out the cut text
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


def test_the_output_filter_cuts_where_the_match_starts_holds_back_and_sees_the_prompt(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('stream_hold = 8\n[[rule]]\nreason = "bomb"\npatterns = ["make a bomb"]\n'
                    'applies_to = ["output"]\n')
    f = OutputFilter(load_policy(path), ["", "how to make a"])
    sent = ""
    for piece in ["Here is ", "how to ", "make a b", "omb now"]:
        out, refusal = f.feed(0, piece, False)
        sent += out
    assert refusal is not None and refusal.reason == "bomb"
    assert sent == "Here is how to " and "make a" not in sent  # held back, then cut where the match starts
    out, refusal = f.feed(1, " bomb", False)  # split between the prompt and the output
    assert refusal is not None and out == ""
    g = OutputFilter(load_policy(path), [""])
    assert g.feed(0, "harmless text here", False)[0] == "harmless t" and g.feed(0, "", True)[0] == "ext here"


def test_a_bad_policy_file_is_refused_naming_the_problem(tmp_path, capsys):
    from aigc.cli import main

    cases = [
        ('[[rule]]\nreason = "x"\npatterns = ["(unclosed"]\n', "rule 1: pattern '(unclosed' is not a valid regular"),
        ('[[rule]]\nreason = "bad reason!"\npatterns = ["a"]\n', "reason = 'bad reason!'"),
        ('[[rule]]\nreason = "x"\npatterns = []\n', "patterns: expected a list of regular expressions"),
        ('[[rule]]\nreason = "x"\npatterns = ["a"]\napplies_to = ["input"]\n', "applies_to = ['input']"),
        ('[[hook]]\ncall = "no_such_module_xyz:check"\n', "cannot import no_such_module_xyz:check"),
        ('colour = "red"\n', "unknown key 'colour'"),
        ("[[rule]\n", "not a TOML policy file"),
        ("log_text = false\n", "no [[rule]] or [[hook]]"),
        ("rule = 5\n", "rule: expected [[rule]] tables"),
        ('[rule]\nreason = "x"\npatterns = ["a"]\n', "rule: expected [[rule]] tables"),
        ('[[rule]]\nreason = "x"\npatterns = ["a*"]\n', "matches the empty text"),
        ('[[rule]]\nreason = "x\\n"\npatterns = ["a"]\n', "reason = 'x\\n'"),
        ('[[hook]]\ncall = ":f"\n', "call = ':f': expected 'module:function'"),
        ('[[hook]]\ncall = "test_policy:shouting"\napplies-to = ["output"]\n', "unknown key 'applies-to'"),
        ('[[hook]]\ncall = "test_policy:asynchronous"\n', "is not a plain function"),
        ("stream_hold = -1\n", "stream_hold = -1: expected an integer from 0 to 4096"),
    ]
    for i, (text, message) in enumerate(cases):
        path = tmp_path / f"p{i}.toml"
        path.write_text(text)
        with pytest.raises(AigcError, match=None) as e:
            load_policy(path)
        assert message in str(e.value) and str(path) in str(e.value), (text, str(e.value))
    assert main(["serve", "tang-base", "--policy", str(tmp_path / "p0.toml")]) == 2
    err = capsys.readouterr().err
    assert "not a valid regular expression" in err and len(err.strip().splitlines()) == 1
