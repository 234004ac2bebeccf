"""Inference in bfloat16 and int8 (weight-only): it runs, says what it costs in val loss, and
refuses what it cannot do.

The val-loss change is measured on tang-base over the first 100 Tang poems (which it was
trained among) and printed, so `pytest -s` shows it; the bounds are what a user would accept
(0.05 nats per token), far above what we measure (bench/RESULTS.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import aigc
from aigc.config import SampleConfig
from aigc.errors import AigcError
from aigc.generate.engine import Engine, naive_generate
from aigc.models.lstm import LSTMConfig, LSTMLM
from aigc.models.quant import Int8Linear, set_inference_dtype
from conftest import CORES, run_cli, tang_documents

torch.set_num_threads(CORES)


def doc_loss(tm, docs: list[str]) -> float:
    """Mean next-token loss (nats) of ``docs``, each opened by the boundary token, one forward pass each."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for doc in docs:
            ids = [tm.tokenizer.bos_id] + tm.tokenizer.encode(doc)
            ids = torch.tensor([ids[:tm.model.context_length + 1]])
            logits = tm.model(ids[:, :-1])
            total += F.cross_entropy(logits.float()[0], ids[0, 1:], reduction="sum").item()
            count += ids.size(1) - 1
    return total / count


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear(lin)
    x = torch.randn(3, 5, 64)
    assert q.qweight.dtype == torch.int8 and q.scale.shape == (48,)
    assert int(q.qweight.abs().max()) == 127
    err = (q(x) - lin(x)).abs().max() / lin(x).abs().max()
    assert err < 0.02, err
    assert q(x).shape == (3, 5, 48) and q(x).dtype == torch.float32


def test_bfloat16_and_int8_run_tang_base_and_report_val_loss_change():
    base = aigc.load("tang-base", device="cpu")
    vocab = base.tokenizer.tk.get_vocab()
    docs = [d for d in tang_documents(100) if all(ch in vocab for ch in d)]
    ref = doc_loss(base, docs)
    prompt = [base.tokenizer.bos_id] + base.tokenizer.encode("春眠不觉晓")
    greedy = SampleConfig(temperature=0.0, max_new_tokens=20, repetition_penalty=1.0)
    ours = [int(t) for t in Engine(base.model).generate(prompt, 1, greedy, seed=0)]
    assert ours == naive_generate(base.model, prompt, greedy, seed=0)  # float32: token for token
    for dtype in ("bfloat16", "int8"):
        tm = aigc.load("tang-base", device="cpu", dtype=dtype)
        loss = doc_loss(tm, docs)
        print(f"tang-base {dtype}: loss {loss:.4f} vs float32 {ref:.4f} ({loss - ref:+.4f} nats/token)")
        assert abs(loss - ref) < 0.05
        cache = tm.model.new_cache(1)
        want = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        assert cache.k.dtype == want and tm.model.rope_cos.dtype == torch.float32
        text = tm.generate("春眠不觉晓", n=1, max_new_tokens=20, temperature=0.0, seed=0)[0]
        assert len(text) > len("春眠不觉晓")
    assert isinstance(tm.model.blocks[0].attn.q_proj, Int8Linear) and isinstance(tm.model.lm_head, Int8Linear)
    assert tm.model.tok_emb.weight.dtype == torch.float32


def test_bad_dtypes_are_refused(served_model_folders, tmp_path):
    r = run_cli("sample", "tang-base", "--dtype", "int4", "--max-new-tokens", "2")
    assert r.returncode == 2 and "--dtype 'int4': expected one of float32, bfloat16, float16, int8" in r.stderr
    r = run_cli("sample", str(served_model_folders["images"]), "--dtype", "int8")
    assert r.returncode == 2 and "the 'dcgan' family has no quantised path" in r.stderr
    r = run_cli("sample", "tang-base", "--dtype", "float16", "--device", "cpu", "--max-new-tokens", "2")
    assert r.returncode == 2 and "float16 needs a CUDA device; on CPU use bfloat16" in r.stderr
    lstm = LSTMLM(LSTMConfig(vocab_size=32, d_embed=8, d_hidden=8, n_layer=1)).eval()
    with pytest.raises(AigcError, match="the 'lstm' family has no quantised path"):
        set_inference_dtype(lstm, "int8")
    out = set_inference_dtype(lstm, "bfloat16")
    logits = out(torch.tensor([[1, 2, 3]]), cache=out.new_cache(1))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
