"""Log-probabilities, echo scoring and JSON output on the OpenAI-compatible API, with the real
`openai` client against a real `aigc serve`; the same through the CLI and the Python API; and
lm-evaluation-harness driving the server."""

from __future__ import annotations

import json
import math

import httpx
import jsonschema
import openai
import pytest
import torch
import torch.nn.functional as F
from conftest import API_KEY, run_cli

import aigc

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["poem", "song"]}, "maxItems": 2}}}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def strict_json(text: str):
    """JSON as a strict reader takes it: a bare NaN or Infinity is an error."""
    def refuse(name):
        raise ValueError(f"non-finite number {name} in JSON")
    return json.loads(text, parse_constant=refuse)


def joined(tokens: list[str]) -> str:
    """The text of OpenAI-style token strings (a part of a character written as ``bytes:\\xNN...``)."""
    raw = b"".join(bytes.fromhex(t[6:].replace("\\x", "")) if t.startswith("bytes:") else t.encode() for t in tokens)
    return raw.decode("utf-8", "ignore")


def test_logprobs_are_finite_and_top_probabilities_sum_to_at_most_one(client, server):
    for temperature in (1.0, 0.01):
        r = client.completions.create(model="text", prompt="明月", max_tokens=6, seed=1, logprobs=5,
                                      temperature=temperature)
        lp = r.choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
        for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
            assert math.isfinite(chosen) and chosen <= 0 and 1 <= len(top) <= 5
            assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5
            assert chosen <= max(top.values()) + 1e-6
        assert joined(lp.tokens) == r.choices[0].text

    chat = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "秋"}], max_tokens=5,
                                          seed=2, logprobs=True, top_logprobs=3, temperature=0.01)
    content = chat.choices[0].logprobs.content
    assert content and all(math.isfinite(t.logprob) and len(t.top_logprobs) == 3 for t in content)
    assert sum(math.exp(t.logprob) for t in content[0].top_logprobs) <= 1 + 1e-5
    assert bytes(b for t in content for b in t.bytes).decode("utf-8", "ignore") == chat.choices[0].message.content
    raw = httpx.post(server + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                     json={"model": "chat", "messages": [{"role": "user", "content": "秋"}], "max_tokens": 4,
                           "logprobs": True, "top_logprobs": 20, "temperature": 0.01,
                           "response_format": {"type": "json_object"}})
    assert raw.status_code == 200 and strict_json(raw.text)  # forbidden tokens come as -9999.0, not -Infinity


def test_streamed_logprobs_equal_the_whole_answer(client):
    whole = client.completions.create(model="text", prompt="春风", max_tokens=8, seed=4, logprobs=2, echo=True)
    tokens, values = [], []
    for chunk in client.completions.create(model="text", prompt="春风", max_tokens=8, seed=4, logprobs=2, echo=True,
                                           stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
            values += chunk.choices[0].logprobs.token_logprobs
    assert tokens == whole.choices[0].logprobs.tokens and values == whole.choices[0].logprobs.token_logprobs


def test_echo_scores_the_prompt_as_eval_does(client, served_model_folders):
    text = "床前明月光，疑是地上霜。"
    r = client.completions.create(model="text", prompt=text, max_tokens=0, echo=True, logprobs=1)
    choice = r.choices[0]
    assert choice.text == text and choice.finish_reason == "length" and r.usage.completion_tokens == 0
    scores = choice.logprobs.token_logprobs
    tm = aigc.load(served_model_folders["text"])
    ids = tm.tokenizer.encode(text)
    assert len(scores) == len(ids) and joined(choice.logprobs.tokens) == text
    with torch.no_grad():  # aigc eval's number: mean next-token cross-entropy after the document-start token
        x = torch.tensor([[tm.tokenizer.bos_id] + ids])
        loss = F.cross_entropy(tm.model(x)[0, :-1], x[0, 1:])
    assert -sum(scores) / len(scores) == pytest.approx(float(loss), abs=1e-5)
    by_ids = client.completions.create(model="text", prompt=ids, max_tokens=0, echo=True, logprobs=1)
    assert by_ids.choices[0].logprobs.token_logprobs == scores and by_ids.choices[0].text == text


def test_json_schema_output_parses_and_validates_for_20_seeds(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(20):
        r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "谁"}], seed=seed,
                                           max_tokens=200, response_format=fmt)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    any_object = client.completions.create(model="text", prompt="{", max_tokens=64, seed=0,
                                           extra_body={"response_format": {"type": "json_object"}})
    if any_object.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(any_object.choices[0].text), dict)


def test_structured_output_and_logprobs_bad_input_get_400s(client):
    with pytest.raises(openai.BadRequestError, match="top_logprobs = 21: expected 0 to 20") as e:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}], logprobs=True,
                                       top_logprobs=21)
    assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError, match="logprobs = 50: expected 0 to 20"):
        client.completions.create(model="text", prompt="a", logprobs=50)
    with pytest.raises(openai.BadRequestError, match="cannot compile: .*/nowhere") as e:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}], response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}})
    assert e.value.body["param"] == "response_format"
    for schema in ({"$ref": "#"}, {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}):
        with pytest.raises(openai.BadRequestError) as e:  # compiles, but no document can start: refused up front
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}], response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert e.value.body["param"] == "response_format" and "\n" not in e.value.body["message"]
        assert client.completions.create(model="text", prompt="a", max_tokens=2).choices  # the server goes on
    with pytest.raises(openai.BadRequestError, match="ignore_eos"):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}],
                                       response_format={"type": "json_object"}, extra_body={"ignore_eos": True})
    with pytest.raises(openai.BadRequestError, match="response_format.type = 'yaml'"):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}],
                                       response_format={"type": "yaml"})
    with pytest.raises(openai.BadRequestError, match="image model|not a text model|text model"):
        client.completions.create(model="images", prompt="Sneaker", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens = 0: only with echo and logprobs"):
        client.completions.create(model="text", prompt="a", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="token id 99999 is outside the vocabulary"):
        client.completions.create(model="text", prompt=[1, 99999], max_tokens=1)


def test_one_seed_rule_for_cli_api_and_server(client, served_model_folders):
    folder = served_model_folders["text"]
    api = aigc.load(folder).generate("秋", n=3, seed=11, max_new_tokens=6, temperature=1.0, include_prompt=False)
    alone = [aigc.load(folder).generate("秋", n=1, seed=11 + i, max_new_tokens=6, include_prompt=False)[0]
             for i in range(3)]
    served = client.completions.create(model="text", prompt="秋", n=3, seed=11, max_tokens=6)
    cli = run_cli("sample", str(folder), "--prompt", "秋", "--n", "3", "--seed", "11", "--max-new-tokens", "6")
    assert cli.returncode == 0, cli.stderr
    printed = [part.split("\n", 1)[1].rstrip("\n") for part in cli.stdout.split("--- sample ")[1:]]
    assert api == alone == [c.text for c in served.choices]
    assert [t.replace("\r\n", "\n").replace("\r", "\n") for t in api] == [p[len("秋"):] for p in printed]  # text mode


def test_cli_and_api_give_logprobs_and_json(served_model_folders, tmp_path):
    folder = served_model_folders["text"]
    done = aigc.load(folder).complete("春", seed=3, max_new_tokens=5, logprobs=True, top_logprobs=2)[0]
    assert len(done.logprobs) == 5 and all(len(e.top) == 2 and e.logprob <= 0 for e in done.logprobs)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA), encoding="utf-8")
    r = run_cli("sample", str(folder), "--json-schema", str(schema), "--seed", "5", "--max-new-tokens", "200",
                "--logprobs", "1")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout.splitlines()[0]), SCHEMA)
    assert "logprob" in r.stdout.splitlines()[1]
    (tmp_path / "bad.json").write_text("[1, 2]", encoding="utf-8")
    bad = run_cli("sample", str(folder), "--json-schema", str(tmp_path / "bad.json"))
    assert bad.returncode != 0 and "bad.json" in bad.stderr and "expected a JSON object" in bad.stderr


# ---------------------------------------------------------------- lm-evaluation-harness against the server
MC = [("床前明月", ["光", "霜", "雪"], 0), ("疑是地上", ["光", "霜", "云"], 1), ("举头望明", ["月", "日", "星"], 0),
      ("低头思故", ["乡", "人", "国"], 0), ("春眠不觉", ["晓", "夜", "山"], 0), ("处处闻啼", ["鸟", "花", "风"], 0),
      ("白日依山", ["尽", "落", "远"], 0), ("黄河入海", ["流", "深", "清"], 0)]
GEN = [("床前", "明月光"), ("白日依", "山尽"), ("春眠不", "觉晓")]


def lm_eval_tasks(folder) -> None:
    """A multiple-choice (loglikelihood) task and a generate_until task, defined from local files."""
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n" \
             "target_delimiter: \"\"\n"
    (folder / "mc.jsonl").write_text("".join(json.dumps({"q": q, "choices": c, "answer": a}, ensure_ascii=False) + "\n"
                                             for q, c, a in MC), encoding="utf-8")
    (folder / "gen.jsonl").write_text("".join(json.dumps({"q": q, "target": t}, ensure_ascii=False) + "\n"
                                              for q, t in GEN), encoding="utf-8")
    (folder / "aigc_mc.yaml").write_text(
        "task: aigc_mc\n" + common.format(path=folder / "mc.jsonl") + "output_type: multiple_choice\n"
        "doc_to_text: \"{{q}}\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n", encoding="utf-8")
    (folder / "aigc_gen.yaml").write_text(
        "task: aigc_gen\n" + common.format(path=folder / "gen.jsonl") + "output_type: generate_until\n"
        "doc_to_text: \"{{q}}\"\ndoc_to_target: \"{{target}}\"\ngeneration_kwargs:\n  until: [\"，\", \"。\"]\n"
        "  max_gen_toks: 4\nmetric_list:\n  - metric: exact_match\n", encoding="utf-8")


def test_lm_eval_local_completions_matches_aigc_scoring(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import start_server

    from aigc.folders import resolve_model_folder

    folder = resolve_model_folder("tang-base")
    lm_eval_tasks(tmp_path)
    proc, url = start_server({"tang": folder})
    try:
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
               "OPENAI_API_KEY": "unused", "TOKENIZERS_PARALLELISM": "false"}
        run = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
             f"base_url={url}/v1/completions,model=tang,tokenizer_backend=huggingface,tokenizer={folder},"
             "num_concurrent=1,max_retries=1", "--tasks", "aigc_mc,aigc_gen", "--include_path", str(tmp_path),
             "--output_path", str(tmp_path / "out"), "--log_samples"],
            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    samples = {task: [json.loads(line) for line in next((tmp_path / "out").rglob(f"samples_{task}_*.jsonl")).open()]
               for task in ("aigc_mc", "aigc_gen")}
    tm = aigc.load("tang-base")
    from aigc.generate.text import Prompt

    correct = 0
    for s in sorted(samples["aigc_mc"], key=lambda s: s["doc_id"]):
        q, choices, answer = MC[s["doc_id"]]
        ours = []
        for choice in choices:  # aigc's own: the choice's tokens scored after the question's
            ctx, whole = tm.tokenizer.encode(q), tm.tokenizer.encode(q + choice)
            ours.append(sum(e.logprob for e in tm.score(Prompt([tm.tokenizer.bos_id] + whole))[len(ctx):]))
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        assert theirs == pytest.approx(ours, abs=1e-4)
        correct += int(max(range(len(ours)), key=ours.__getitem__) == answer)
    assert results["aigc_mc"]["acc,none"] == pytest.approx(correct / len(MC))
    matches = 0
    for s in sorted(samples["aigc_gen"], key=lambda s: s["doc_id"]):
        q, target = GEN[s["doc_id"]]
        ours = tm.generate(q, temperature=0, stop=["，", "。"], max_new_tokens=4, token_healing=False,
                           include_prompt=False)[0]
        assert s["filtered_resps"][0] == ours
        matches += int(ours == target)
    assert results["aigc_gen"]["exact_match,none"] == pytest.approx(matches / len(GEN))
