"""The same code on a CUDA device (device auto-detection): training, cached and compiled decoding,
16-bit inference. Marked ``cuda``; skipped, with the reason, where no CUDA device is present
(``make test`` runs them on a machine with one; ``pytest -m cuda`` runs them alone)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from aigc.config import SampleConfig
from aigc.generate.engine import Engine, naive_generate
from aigc.models.quant import set_inference_dtype
from aigc.models.transformer import GPT, GPTConfig
from conftest import run_cli, tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

GREEDY = SampleConfig(temperature=0.0, max_new_tokens=30, frequency_penalty=1.0)


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32, bias=False,
                          norm="rmsnorm", positions="rope", mlp="swiglu")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    return model


def test_training_on_cuda_follows_the_cpu_run(tmp_path, small_corpus):
    losses = {}
    for device in ("cpu", "cuda"):
        (tmp_path / device).mkdir()
        cfg = tiny_config(tmp_path / device, small_corpus, max_steps=10, log_interval=1, device=device)
        r = run_cli("train", str(cfg), "--quiet")
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in (tmp_path / device / "run" / "metrics.jsonl").read_text().splitlines()]
        losses[device] = [row["train_loss"] for row in rows if "train_loss" in row]
    assert losses["cuda"] == pytest.approx(losses["cpu"], abs=2e-3)
    r = run_cli("sample", str(tmp_path / "cuda" / "run"), "--device", "cuda", "--max-new-tokens", "8", "--seed", "0")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_cached_and_compiled_greedy_decoding_on_cuda_equal_the_naive_reference():
    model = tiny_gpt().cuda()
    prompt = [3, 14, 15, 9, 2, 6]
    naive = naive_generate(model, prompt, GREEDY)
    assert [int(t) for t in Engine(model).generate(prompt, 1, GREEDY, seed=0)] == naive
    assert [int(t) for t in Engine(model, compiled=True).generate(prompt, 1, GREEDY, seed=0)] == naive


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_inference_on_cuda_stays_close_to_float32(dtype):
    x = torch.randint(0, 50, (4, 32), device="cuda")
    ref = tiny_gpt().cuda()
    with torch.inference_mode():
        want = torch.log_softmax(ref(x).float(), -1)
        half = set_inference_dtype(tiny_gpt().cuda(), dtype)
        got = torch.log_softmax(half(x).float(), -1)
        assert torch.isfinite(got).all()
        # the mean next-token loss under the 16-bit weights changes little
        nll = lambda lp: -lp[:, :-1].gather(-1, x[:, 1:, None]).mean()
        assert abs(float(nll(got) - nll(want))) < 0.05
    out = list(Engine(half).generate([1, 2, 3], 2, dataclasses.replace(GREEDY, max_new_tokens=8), seed=0))
    assert len(out) == 8
