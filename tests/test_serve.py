"""The HTTP server, driven with the official `openai` client against a real `aigc serve` on loopback."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import httpx
import openai
import pytest
from conftest import API_KEY, CLASSES, start_server
from PIL import Image


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def metric(url: str, name: str, labels: str = "") -> float:
    """The value of one Prometheus series from /metrics (0 when absent)."""
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_models_are_listed_with_their_kind(client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"text", "chat", "images"}
    assert models["chat"].aigc["chat"] is True and models["text"].aigc["chat"] is False
    assert models["images"].aigc["classes"] == CLASSES and "28x28" in models["images"].aigc["sizes"]
    assert client.models.retrieve("text").id == "text"


def test_completion_is_reproducible_and_counts_tokens(client):
    a = client.completions.create(model="text", prompt="明月", max_tokens=12, seed=7)
    b = client.completions.create(model="text", prompt="明月", max_tokens=12, seed=7)
    choice = a.choices[0]
    assert a.object == "text_completion" and choice.finish_reason in ("length", "stop")
    assert choice.text == b.choices[0].text
    assert 1 <= a.usage.completion_tokens <= 12 and a.usage.prompt_tokens >= 2
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    if choice.finish_reason == "length":
        assert a.usage.completion_tokens == 12
    greedy = client.completions.create(model="text", prompt="明月", max_tokens=8, temperature=0, n=2, echo=True)
    assert greedy.choices[0].text == greedy.choices[1].text and greedy.choices[0].text.startswith("明月")


def test_streamed_completion_equals_the_whole_one(client):
    whole = client.completions.create(model="text", prompt="春风", max_tokens=20, seed=3, n=2)
    stream = client.completions.create(model="text", prompt="春风", max_tokens=20, seed=3, n=2, stream=True,
                                       stream_options={"include_usage": True})
    texts, finish, usage, chunks = ["", ""], [None, None], None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            texts[c.index] += c.text
            finish[c.index] = c.finish_reason or finish[c.index]
        usage = chunk.usage or usage
    assert chunks > 3  # arrived piece by piece
    assert texts == [c.text for c in whole.choices]
    assert finish == [c.finish_reason for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_chat_completion_and_its_stream(client, server):
    messages = [{"role": "system", "content": "hello"}, {"role": "user", "content": "明月"}]
    whole = client.chat.completions.create(model="chat", messages=messages, max_tokens=16, seed=1)
    msg = whole.choices[0].message
    assert whole.object == "chat.completion" and msg.role == "assistant" and "\n" not in msg.content
    deltas, roles = [], []
    for chunk in client.chat.completions.create(model="chat", messages=messages, max_tokens=16, seed=1,
                                                stream=True):
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            roles.append(c.delta.role)
            deltas.append(c.delta.content or "")
    assert roles[0] == "assistant" and "".join(deltas) == msg.content
    tokens = httpx.post(server + "/tokenize", json={"model": "chat", "messages": messages},
                        headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert whole.usage.prompt_tokens == tokens["count"]


def test_chat_errors_name_the_problem(client):
    with pytest.raises(openai.BadRequestError, match="not a chat model"):
        client.chat.completions.create(model="text", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.role = 'wizard'"):
        client.chat.completions.create(model="chat", messages=[{"role": "wizard", "content": "a"}])


def test_image_generation_returns_pngs_of_the_asked_class_and_size(client):
    result = client.images.generate(model="images", prompt="a pair of sneakers", n=3, size="56x56",
                                    response_format="b64_json", extra_body={"seed": 5})
    assert len(result.data) == 3
    for item in result.data:
        img = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert img.format == "PNG" and img.size == (56, 56) and img.mode == "L"
        assert json.loads(img.text["aigc:provenance"])["class"] == "Sneaker"
        assert item.revised_prompt == "Sneaker"
    again = client.images.generate(model="images", prompt="Sneaker", n=3, size="56x56", extra_body={"seed": 5})
    pixels = lambda data: [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).tobytes() for d in data]  # noqa: E731
    assert pixels(again.data) == pixels(result.data)  # the same images (the signed manifests differ: a fresh instance id)
    every = client.images.generate(model="images", prompt="", n=4)
    assert [d.revised_prompt for d in every.data] == CLASSES + CLASSES[:1]
    with pytest.raises(openai.BadRequestError, match="names none of this model's classes"):
        client.images.generate(model="images", prompt="a cat")
    with pytest.raises(openai.BadRequestError, match="names several classes"):
        client.images.generate(model="images", prompt="a sneaker and a t-shirt")
    with pytest.raises(openai.BadRequestError, match="sizes offered"):
        client.images.generate(model="images", prompt="Trouser", size="1024x1024")
    with pytest.raises(openai.BadRequestError, match="text model"):
        client.images.generate(model="text", prompt="Trouser")


def test_wrong_or_missing_key_is_401_and_health_stays_open(server):
    for key in ("wrong-key", ""):
        bad = openai.OpenAI(base_url=server + "/v1", api_key=key or "x", max_retries=0,
                            default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as e:
            bad.completions.create(model="text", prompt="明月", max_tokens=2)
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert httpx.get(server + "/health").json()["status"] == "ok"
    assert httpx.get(server + "/").status_code == 200
    assert httpx.post(server + "/tokenize", json={"model": "text", "prompt": "明"}).status_code == 401


def test_oversize_requests_get_4xx_and_the_server_lives_on(client, server):
    with pytest.raises(openai.BadRequestError, match="max_tokens = 100000: expected 1 to 2000"):
        client.completions.create(model="text", prompt="明月", max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="n = 99"):
        client.completions.create(model="text", prompt="明月", n=99)
    for prompt in ("明月春风" * 100, "明月春风" * 15):  # refused before encoding / after counting its tokens
        with pytest.raises(openai.BadRequestError, match="this server accepts at most 63 tokens") as e:
            client.completions.create(model="text", prompt=prompt)
        assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="text", prompt="月" * 30_000)
    assert e.value.status_code == 413
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4' not found"):
        client.completions.create(model="gpt-4", prompt="明月")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="text", prompt="明月", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="seed = 18446744073709551616") as e:
        client.completions.create(model="text", prompt="明月", seed=2**64)
    assert e.value.body["param"] == "seed"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="text", prompt="明月", max_tokens="4")  # no silent coercion
    with pytest.raises(openai.BadRequestError, match="tool and function calling"):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(openai.BadRequestError, match="not trained for fill-in-the-middle"):
        client.completions.create(model="text", prompt="明月", suffix="春风")
    nulls = client.completions.create(model="text", prompt="明月", max_tokens=2, extra_body={"n": None, "echo": None})
    assert len(nulls.choices) == 1
    auth = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(server + "/v1/completions", content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/completions", content=b"[1]", headers=auth)
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]["message"]
    assert client.completions.create(model="text", prompt="明月", max_tokens=2).choices


def test_tokenize_and_detokenize_round_trip(server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    t = httpx.post(server + "/tokenize", json={"model": "text", "prompt": "明月 春风\n"}, headers=auth).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 64
    back = httpx.post(server + "/detokenize", json={"model": "text", "tokens": t["tokens"]}, headers=auth).json()
    assert back["prompt"] == "明月 春风\n"
    r = httpx.post(server + "/detokenize", json={"model": "text", "tokens": [10**6]}, headers=auth)
    assert r.status_code == 400 and "outside the vocabulary" in r.text


def test_parallel_streaming_clients_all_finish_with_their_own_results(client):
    prompts = ["明月", "春风", "秋天", "江上", "白日", "青山"]
    expected = [client.completions.create(model="text", prompt=p, max_tokens=30, seed=i).choices[0].text
                for i, p in enumerate(prompts)]
    got, errors = [None] * len(prompts), []

    def run(i):
        try:
            parts = [c.choices[0].text for c in client.completions.create(
                model="text", prompt=prompts[i], max_tokens=30, seed=i, stream=True) if c.choices]
            got[i] = "".join(parts)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and got == expected


def test_a_disconnected_stream_stops_generating(server):
    before = metric(server, "aigc_requests_cancelled_total")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "text", "prompt": "明月", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server + "/v1/completions", json=body, headers=auth, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    deadline = time.time() + 30
    while time.time() < deadline and metric(server, "aigc_requests_cancelled_total") <= before:
        time.sleep(0.2)
    assert metric(server, "aigc_requests_cancelled_total") == before + 1
    assert metric(server, "aigc_requests_in_flight") == 0
    tokens = metric(server, "aigc_generation_tokens_total", '{model="text"}')
    assert tokens > 0
    assert metric(server, "aigc_requests_total", '{endpoint="/v1/completions",status="200"}') >= 1
    deadline = time.time() + 10  # the abandoned stream is counted too, as 499 (client closed request)
    while time.time() < deadline and metric(server, "aigc_requests_total", '{endpoint="/v1/completions",status="499"}') < 1:
        time.sleep(0.2)
    assert metric(server, "aigc_requests_total", '{endpoint="/v1/completions",status="499"}') >= 1


def test_a_full_server_answers_429(served_model_folders):
    proc, url = start_server({"text": served_model_folders["text"]}, "--max-active", "1", "--max-queued", "0",
                             "--max-tokens", "5000")
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        long = c.completions.create(model="text", prompt="明月", max_tokens=5000, stream=True,
                                    extra_body={"ignore_eos": True})
        next(iter(long))  # the one slot is generating
        with pytest.raises(openai.RateLimitError, match="server busy"):
            c.completions.create(model="text", prompt="春风", max_tokens=2)
        long.close()
        deadline = time.time() + 30
        while time.time() < deadline and metric(url, "aigc_requests_in_flight") > 0:
            time.sleep(0.2)
        assert c.completions.create(model="text", prompt="春风", max_tokens=2).choices  # free again
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_requests_beyond_the_batch_rows_wait_and_get_their_own_results(served_model_folders):
    """With room for 2 rows, requests of n = 2 decode one batch at a time; each still gets its solo tokens."""
    proc, url = start_server({"text": served_model_folders["text"]}, "--max-batch", "2", "--max-n", "2")
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        prompts = ["明月", "春风", "江上", "白日"]
        alone = [[ch.text for ch in c.completions.create(model="text", prompt=p, n=2, max_tokens=20, seed=i).choices]
                 for i, p in enumerate(prompts)]
        got, errors = [None] * 4, []

        def run(i):
            try:
                r = c.completions.create(model="text", prompt=prompts[i], n=2, max_tokens=20, seed=i)
                got[i] = [ch.text for ch in r.choices]
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors and got == alone
        assert metric(url, "aigc_requests_waited_for_batch_rows_total") >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_refuses_bad_startup_settings(served_model_folders, tmp_path):
    from conftest import run_cli

    text = str(served_model_folders["text"])
    for args, needle in ((["--api-key", "clé"], "printable ASCII"), (["--port", "70000"], "--port 70000"),
                         (["--max-batch", "2", "--max-n", "4"], "--max-batch = 2"),
                         ([f"a={text}", "--host", "127.0.0.1"], "given twice"), ([str(tmp_path)], "neither a model")):
        r = run_cli("serve", f"a={text}", *args, timeout=120) if args[0] != str(tmp_path) else run_cli("serve", *args)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)


def test_a_developer_message_is_the_system_prompt(client):
    """OpenAI's newer name for the system role: the same conversation, the same reply."""
    asked = [{"role": "user", "content": "明月"}]
    replies = [client.chat.completions.create(model="chat", messages=[{"role": role, "content": "春风"}, *asked],
                                              max_tokens=12, seed=3).choices[0].message.content
               for role in ("developer", "system")]
    without = client.chat.completions.create(model="chat", messages=asked, max_tokens=12, seed=3)
    assert replies[0] == replies[1] != without.choices[0].message.content
