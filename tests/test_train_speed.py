"""Training speed features that must not change what is computed: torch.compile (`train.compile`),
the fused AdamW step, float32 attention under CPU bfloat16 autocast, and the bfloat16 note."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from aigc.config import TrainConfig
from aigc.models.transformer import GPT, GPTConfig
from aigc.train.speed import dtype_note, make_optimizer
from conftest import CORES, run_cli, tiny_config

torch.set_num_threads(CORES)


def losses(run) -> list[float]:
    return [row["train_loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "train_loss" in row]


def test_compiled_and_eager_training_give_the_same_losses(tmp_path, small_corpus):
    runs = {}
    for mode in ("eager", "compiled"):
        (tmp_path / mode).mkdir()
        cfg = tiny_config(tmp_path / mode, small_corpus, max_steps=5, log_interval=1, eval_interval=100,
                          checkpoint_interval=100, compile=mode == "compiled")
        r = run_cli("train", str(cfg), "--quiet")
        assert r.returncode == 0, r.stderr
        runs[mode] = tmp_path / mode / "run"
    eager, compiled = losses(runs["eager"]), losses(runs["compiled"])
    assert len(eager) == len(compiled) == 5
    assert compiled == pytest.approx(eager, abs=2e-4)
    # the checkpoint of a compiled run is the plain module's: it loads and samples like any other
    r = run_cli("sample", str(runs["compiled"]), "--max-new-tokens", "8", "--seed", "0")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    ckpt = sorted((runs["compiled"] / "checkpoints").glob("step-*"))[-1]
    keys = safe_open(str(ckpt / "model.safetensors"), "pt").keys()
    assert "blocks.0.attn.q_proj.weight" in keys and not any("_orig_mod" in k for k in keys)


def test_fused_adamw_steps_like_the_reference_loop():
    torch.manual_seed(0)
    a = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=16))
    b = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=16))
    b.load_state_dict(a.state_dict())
    t = TrainConfig(lr=1e-2)
    fused = make_optimizer([{"params": list(a.parameters()), "weight_decay": 0.1}], t, torch.device("cpu"))
    plain = torch.optim.AdamW([{"params": list(b.parameters()), "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95),
                              foreach=False)
    assert fused.defaults["fused"]
    x = torch.randint(0, 50, (2, 16))
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            loss = torch.nn.functional.cross_entropy(model(x).view(-1, 50), x.view(-1))
            loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-4), name  # steps of lr = 1e-2; near-zero gradients amplify rounding


def test_bfloat16_autocast_keeps_attention_in_float32_and_says_whether_it_pays():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=16, positions="rope",
                          norm="rmsnorm", mlp="swiglu", bias=False))
    seen = {}
    attn = model.blocks[0].attn
    original = attn.attend

    def spy(q, k, v, mask, causal):
        y = original(q, k, v, mask, causal)
        seen["in"], seen["out"] = q.dtype, y.dtype
        return y
    attn.attend = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, 50, (2, 16)))
    assert seen == {"in": torch.bfloat16, "out": torch.float32}  # bf16 projections, float32 attention
    assert logits.dtype == torch.bfloat16
    note = dtype_note(torch.device("cpu"), "bfloat16")
    assert note.startswith("train.dtype = bfloat16: this CPU runs bfloat16 matrix products")
    assert ("float32 will train faster" in note) != ("as fast as float32" in note)
    assert dtype_note(torch.device("cpu"), "float32") is None
