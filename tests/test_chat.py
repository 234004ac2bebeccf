"""Chat fine-tuning (data.format = "chat": templates, assistant-only targets) and `aigc chat`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, tang_documents, tiny_config

from aigc.config import DataConfig
from aigc.data.chat import CHATML, CHATML_END, ChatTemplate, read_conversations, render_with_targets
from aigc.data.shards import TokenData, prepare
from aigc.errors import AigcError

ROOT = Path(__file__).resolve().parent.parent
ASKS = ["写一首诗", "再写一首", "写一首关于秋天的诗"]


def conversations(n: int = 24) -> list[dict]:
    """``n`` conversations built from real poems: one or two turns, some with a system prompt."""
    poems = tang_documents(2 * n)
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "你是诗人。"}] if i % 3 == 0 else []
        messages += [{"role": "user", "content": ASKS[i % 3]}, {"role": "assistant", "content": poems[2 * i]}]
        if i % 2:
            messages += [{"role": "user", "content": "再写一首"}, {"role": "assistant", "content": poems[2 * i + 1]}]
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", conversations())


def masked_runs(data: TokenData, split: str) -> list[str]:
    """The text of each maximal run of target tokens of ``split`` (special tokens spelled out)."""
    ids, mask = np.asarray(data.splits[split]).tolist(), np.asarray(data.masks[split]).tolist()
    runs, current = [], []
    for tok, m in zip(ids + [0], mask + [0]):
        if m:
            current.append(tok)
        elif current:
            runs.append(data.tokenizer.tk.decode(current, skip_special_tokens=False))
            current = []
    return runs


# ---------------------------------------------------------------- reading and checking conversations
def test_unknown_role_names_file_line_and_role_in_prepare_and_train(tmp_path):
    rows = conversations(4)
    rows[2]["messages"][-1]["role"] = "wizard"
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    line = 3
    result = run_cli("prepare", "--source", str(bad), "--data.chat_template=chatml", "--out", str(tmp_path / "p"),
                     "--quiet")
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:{line}" in err and "'wizard'" in err, err
    config = tiny_config(tmp_path, bad, threads=1)
    result = run_cli("train", str(config), "--data.chat_template=chatml", "--quiet")
    assert result.returncode == 2 and f"{bad}:{line}" in result.stderr and "'wizard'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("line, message", [
    ({"text": "not a chat"}, 'no "messages" list'),
    ({"messages": [{"role": "user", "content": "写诗"}, {"role": "assistant", "content": 3}]},
     "messages[1].content: expected a string"),
    ({"messages": [{"role": "system", "content": "你好"}, {"role": "user", "content": "写诗"}]}, "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "春眠不觉晓"}]}, "opens with a system or user turn"),
    ("{not json", "invalid JSON"),
])
def test_bad_conversations_are_named_by_line(line, message):
    good = json.dumps({"messages": [{"role": "user", "content": "写诗"}, {"role": "assistant", "content": "好"}]})
    text = good + "\n" + (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
    with pytest.raises(AigcError, match=r"^chat\.jsonl:2: .*" + re.escape(message)):
        read_conversations(text, "chat.jsonl")


def test_chat_data_needs_a_template(chat_file, tmp_path):
    with pytest.raises(AigcError, match=r'set data\.chat_template = "chatml"'):
        prepare(DataConfig(source=str(chat_file), prepared_dir=str(tmp_path / "p")), progress=False)


def test_a_template_that_is_not_incremental_is_refused():
    template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT>{% endif %}")
    messages = [{"role": "user", "content": "写诗"}, {"role": "assistant", "content": "好"}]
    with pytest.raises(AigcError, match="not incremental at messages\\[1\\]"):
        render_with_targets(ChatTemplate(template), messages)


# ---------------------------------------------------------------- targets: the assistant's tokens, nothing else
@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_mask_covers_exactly_the_assistant_tokens(chat_file, tmp_path, tokenizer):
    cfg = DataConfig(source=str(chat_file), tokenizer=tokenizer, vocab_size=400, chat_template="chatml",
                     prepared_dir=str(tmp_path / "p"))  # format "auto": picked as chat by its first line
    data = TokenData(prepare(cfg, progress=False))
    expected = sorted(m["content"] + CHATML_END for row in conversations() for m in row["messages"]
                      if m["role"] == "assistant")
    assert sorted(masked_runs(data, "train") + masked_runs(data, "val")) == expected
    for split in ("train", "val"):
        assert data.meta["splits"][split]["target_tokens"] == int(np.asarray(data.masks[split]).sum())
    # the template travels with the tokenizer, its markers are single tokens
    assert data.tokenizer.config["chat_template"] == CHATML and data.tokenizer.config["eos_token"] == CHATML_END
    assert json.loads((data.folder / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    start = data.tokenizer.tk.token_to_id("<|im_start|>")
    assert start is not None and data.tokenizer.encode("<|im_start|>user") == [start] + data.tokenizer.encode("user")


def test_a_base_models_own_template_is_used(chat_file, served_model_folders, tmp_path):
    """data.tokenizer = a chat model folder: its template ("role: content\\n", eos "\\n") renders the data."""
    base = served_model_folders["chat"]
    data = TokenData(prepare(DataConfig(source=str(chat_file), tokenizer=str(base), prepared_dir=str(tmp_path / "p")),
                             progress=False))
    expected = sorted(" " + m["content"] + "\n" for row in conversations() for m in row["messages"]
                      if m["role"] == "assistant")  # what the template adds after "assistant:"
    assert sorted(masked_runs(data, "train") + masked_runs(data, "val")) == expected
    assert "chat_template" in json.loads((data.folder / "tokenizer_config.json").read_text())
    with pytest.raises(AigcError, match="lacks <\\|im_start\\|> as a single token"):
        prepare(DataConfig(source=str(chat_file), tokenizer=str(base), chat_template="chatml",
                           prepared_dir=str(tmp_path / "q")), progress=False)


def test_masked_loss_is_cross_entropy_on_assistant_tokens_only(chat_file, tmp_path):
    from aigc.evaluate.text import heldout_metrics
    from aigc.models.transformer import GPT, GPTConfig
    from aigc.train.objectives import lm_loss

    torch.set_num_threads(1)
    data = TokenData(prepare(DataConfig(source=str(chat_file), chat_template="chatml",
                                        prepared_dir=str(tmp_path / "p")), progress=False))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=data.tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16))
    x, y = data.batch("train", 4, 32, torch.Generator().manual_seed(3))
    loss, _ = lm_loss(model, (x, y))
    # the same windows, read from the shards by hand
    arr, mask = np.asarray(data.splits["train"]), np.asarray(data.masks["train"])
    starts = torch.randint(0, arr.size - 33, (4,), generator=torch.Generator().manual_seed(3)).tolist()
    targets = torch.from_numpy(np.stack([arr[s + 1:s + 33] for s in starts]).astype(np.int64))
    keep = torch.from_numpy(np.stack([mask[s + 1:s + 33] for s in starts]).astype(bool))
    assert 0 < keep.sum() < keep.numel() and torch.equal(y[keep], targets[keep]) and (y[~keep] == -100).all()
    logp = F.log_softmax(model(x).float(), -1).gather(-1, targets[..., None])[..., 0]  # (B, T)
    assert torch.allclose(loss, -logp[keep].mean(), atol=1e-5)
    assert not torch.allclose(loss, -logp.mean(), atol=1e-3)  # the whole text would give another number
    # a batch without any assistant token: loss 0, no NaN, no gradient
    none = lm_loss(model, (x, torch.full_like(y, -100)))[0]
    none.backward()
    assert none.item() == 0 and all(p.grad is None or not p.grad.any() for p in model.parameters())
    # held-out scoring counts the val assistant tokens only
    scored = heldout_metrics(model, data, progress=False)
    assert scored["val_tokens_scored"] == data.meta["splits"]["val"]["target_tokens"]


# ---------------------------------------------------------------- a trained chat model and `aigc chat`
@pytest.fixture(scope="module")
def chat_run(chat_file, tmp_path_factory) -> Path:
    """A tiny GPT trained for a few steps on the conversations (ChatML, character tokenizer)."""
    tmp = tmp_path_factory.mktemp("chat-run")
    config = tiny_config(tmp, chat_file, max_steps=20, threads=1, lr=3e-3)
    result = run_cli("train", str(config), "--data.chat_template=chatml", "--model.block_size=128")
    assert result.returncode == 0, result.stderr
    assert "(assistant tokens only)" in result.stdout  # the eval lines
    return tmp / "run"


def chat(model: Path, stdin: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run([sys.executable, "-m", "aigc", "chat", str(model), "--threads", "1", *flags],
                          input=stdin, capture_output=True, text=True, timeout=300, env=env)


def test_chat_streams_replies_keeps_history_and_resets(chat_run):
    folder = chat_run / "checkpoints" / "step-000020"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["eos_token"] == CHATML_END and config["aigc_chat_trained"] is True  # trained on chats: a chat model
    flags = ("--temperature", "1", "--max-tokens", "12", "--seed", "7")
    first = chat(chat_run, "写一首诗\n", *flags)
    assert first.returncode == 0, first.stderr
    reply = first.stdout
    assert reply.startswith("> 写一首诗\n") and reply.endswith("\n\n")  # a pipe: each turn marked
    assert reply.strip() and CHATML_END not in reply and "never trained" not in first.stderr
    session = chat(chat_run, "写一首诗\n再写一首\n/system 你是诗人。\n/system\n/reset\n写一首诗\n/exit\n/bogus\n", *flags)
    assert session.returncode == 0, session.stderr
    # replies: the first, one with history, then after /reset (a new conversation: same seed) the first again
    out = session.stdout
    assert out.startswith(reply) and out.endswith(reply) and len(out) > 2 * len(reply)
    assert "(conversation cleared)" in session.stderr and "(system prompt set)" in session.stderr
    assert "unknown command" not in session.stderr  # nothing after /exit is read


def test_chat_refuses_a_model_without_template(served_model_folders):
    result = run_cli("chat", str(served_model_folders["text"]), "--threads", "1")
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "not a chat model" in err and "chat_template" in err, err


def test_the_shipped_chat_example_reads():
    path = ROOT / "examples" / "chat-poems.jsonl"
    rows = read_conversations(path.read_text(encoding="utf-8"), str(path))
    assert len(rows) == 40
    assert all(m[-1]["role"] == "assistant" and m[-1]["content"].startswith("《") for _, m in rows)
