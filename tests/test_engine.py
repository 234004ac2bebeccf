"""The cached engine against the naive reference, and the sampling filters."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aigc.config import SampleConfig
from aigc.generate.engine import Engine, naive_generate
from aigc.generate.sampling import filter_logits, sample_next
from aigc.models.lstm import LSTMConfig, LSTMLM
from aigc.models.transformer import GPT, GPTConfig

def sp(max_new_tokens: int = 100, **kw) -> SampleConfig:
    """Sampling settings for these tests: temperature 1 and no top-p unless ``kw`` says otherwise."""
    return SampleConfig(**{"temperature": 1.0, "top_p": 1.0, "max_new_tokens": max_new_tokens, **kw})


GPT_VARIANTS = {
    "gpt2-style": dict(norm="layernorm", positions="learned", mlp="gelu", bias=True),
    "llama-style-gqa": dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, n_kv_head=2),
    "untied": dict(tie_embeddings=False),
}


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(**{"vocab_size": 50, "block_size": 64, "n_layer": 2, "n_head": 4, "d_model": 32, **kw})
    model = GPT(cfg).eval()
    with torch.no_grad():  # larger weights than the init so greedy choices are not near-ties
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    return model


@pytest.mark.parametrize("variant", list(GPT_VARIANTS))
def test_greedy_kv_cache_equals_naive(variant):
    model = tiny_gpt(**GPT_VARIANTS[variant])
    prompt = [3, 14, 15, 9, 2, 6]
    for greedy in (sp(temperature=0.0), sp(temperature=0.0, frequency_penalty=1.0)):
        greedy = dataclasses.replace(greedy, max_new_tokens=40)
        cached = [int(t) for t in Engine(model).generate(prompt, 1, greedy, seed=0)]
        assert cached == naive_generate(model, prompt, greedy)
    assert len(set(cached)) > 10  # with the penalty the sequence is not one token repeated


def test_greedy_lstm_state_equals_naive():
    torch.manual_seed(0)
    model = LSTMLM(LSTMConfig(vocab_size=50, n_layer=2, d_embed=16, d_hidden=32)).eval()
    prompt = [1, 2, 3, 4]
    greedy = sp(30, temperature=0.0, repetition_penalty=1.5)
    cached = [int(t) for t in Engine(model).generate(prompt, 1, greedy, seed=0)]
    assert cached == naive_generate(model, prompt, greedy)
    assert len(set(cached)) > 5


def test_chunked_prefill_matches_full_forward():
    """Feeding a sequence in two chunks through the cache gives the logits of one full pass."""
    model = tiny_gpt(**GPT_VARIANTS["llama-style-gqa"])
    idx = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    full = model(idx)
    cache = model.new_cache(2)
    first = model(idx[:, :12], cache=cache)
    second = model(idx[:, 12:], cache=cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=1e-5)


def test_sampling_with_seed_is_reproducible_and_batched_rows_differ():
    model = tiny_gpt()
    params = sp(20, temperature=1.0, top_p=0.95)
    run = lambda: torch.stack(list(Engine(model).generate([1, 2], 3, params, seed=7)), dim=1)
    a, b = run(), run()
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # three samples, not one repeated


def test_engine_continues_past_the_context():
    model = tiny_gpt()
    out = list(Engine(model).generate([1] * 60, 1, sp(30, temperature=0.0), seed=0))
    assert len(out) == 30


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda t: torch.isfinite(t)[0].tolist()
    assert kept(filter_logits(logits, top_k=2, top_p=1.0)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_k=0, top_p=0.8)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_k=0, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits, top_k=0, top_p=0.1)) == [True, False, False, False]


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    counts = torch.tensor([[1, 0, 0]])
    greedy = sp(temperature=0.0, repetition_penalty=1.5)
    assert int(sample_next(logits, counts, greedy, None)) == 1
    assert int(sample_next(logits, counts, sp(temperature=0.0), None)) == 0


def _run_alone(model, requests):
    """Each request (prompt, n, params, seed, steps) generated alone by Engine: a list of (steps, n) tensors."""
    return [torch.stack(list(Engine(model).generate(p, n, dataclasses.replace(params, max_new_tokens=k), seed)), dim=1)
            for p, n, params, seed, k in requests]


def _run_batched(model, requests, joins):
    """The same requests through one BatchEngine, request i joining at step joins[i]; each leaves when done."""
    from aigc.generate.engine import BatchEngine

    engine = BatchEngine(model, max_rows=16)
    seqs, outs = {}, {i: [] for i in range(len(requests))}
    step = 0
    while len(outs) != sum(1 for i in outs if len(outs[i]) == requests[i][4]) or len(seqs) < len(requests):
        for i, (p, n, params, seed, k) in enumerate(requests):
            if joins[i] == step and i not in seqs:
                seqs[i] = engine.add(p, n, params, seed)
        for i, seq in seqs.items():
            if not seq.closed:
                outs[i].append(next(seq))
                if len(outs[i]) == requests[i][4]:
                    seq.close()
        engine.step()
        step += 1
    assert engine.rows == 0 and not engine.seqs
    return [torch.stack(outs[i], dim=1) for i in range(len(requests))]


@pytest.mark.parametrize("variant", ["gpt2-style", "llama-style-gqa", "lstm"])
def test_continuous_batching_gives_each_request_its_solo_tokens(variant):
    """Requests that join and leave a shared batch at different steps, with different prompts, n, sampling
    settings and seeds, get the tokens they get alone; one runs past the 64-token context."""
    if variant == "lstm":
        torch.manual_seed(0)
        model = LSTMLM(LSTMConfig(vocab_size=50, n_layer=2, d_embed=16, d_hidden=32)).eval()
    else:
        model = tiny_gpt(**GPT_VARIANTS[variant])
    requests = [
        ([3, 14, 15], 1, sp(temperature=0.0), 0, 30),
        ([1] * 50, 2, sp(temperature=1.0, top_p=0.9), 5, 40),  # past the context of 64
        ([7, 7, 2, 9, 4, 4, 1], 3, sp(temperature=0.8, top_k=10, frequency_penalty=0.5), 11, 12),
        ([2], 1, sp(temperature=1.2, repetition_penalty=1.3), 3, 25),
    ]
    alone = _run_alone(model, requests)
    batched = _run_batched(model, requests, joins=[0, 0, 4, 9])
    for a, b in zip(alone, batched):
        assert torch.equal(a, b)


def test_batch_engine_refuses_rows_it_does_not_have():
    from aigc.generate.engine import BatchEngine, RowsFull

    engine = BatchEngine(tiny_gpt(), max_rows=4)
    seq = engine.add([1, 2], 3)
    with pytest.raises(RowsFull):
        engine.add([1], 2)
    with pytest.raises(ValueError, match="more rows"):
        engine.add([1], 5)
    seq.close()
    assert engine.add([1], 2).n == 2


def test_a_failing_hook_fails_its_own_sequence_and_the_batch_goes_on():
    """A grammar that reaches a dead end fails its request alone; a hook failing at the first token
    leaves no rows behind."""
    from aigc.generate.engine import BatchEngine

    class DeadEnd:
        wants_scores = False

        def __init__(self, after):
            self.after = after

        def bias(self, logits):
            return None

        def allowed(self):
            if self.after == 0:
                raise ValueError("no token can continue")
            self.after -= 1
            return None

        def took(self, nxt, scores):
            pass

    engine = BatchEngine(tiny_gpt(), max_rows=8)
    with pytest.raises(ValueError, match="no token can continue"):
        engine.add([1, 2], 2, hook=DeadEnd(0))
    assert engine.rows == 0 and not engine.seqs
    plain, doomed = engine.add([1, 2], 2, seed=0), engine.add([3], 1, hook=DeadEnd(1))
    next(plain), next(doomed)
    engine.step()  # doomed's hook fails here: only doomed learns of it
    with pytest.raises(ValueError, match="no token can continue"):
        next(doomed)
    doomed.close()
    got = [next(plain)]
    for _ in range(3):
        engine.step()
        got.append(next(plain))
    assert all(t.shape == (2,) for t in got) and engine.rows == 2


def test_first_token_constraint_of_token_healing_holds_alone_and_batched():
    """Token healing: only the allowed tokens may come first, in Engine and in BatchEngine alike."""
    from aigc.generate.engine import BatchEngine

    model = tiny_gpt()
    allowed = torch.zeros(50, dtype=torch.bool)
    allowed[[7, 11]] = True
    params = sp(5, temperature=1.5)
    alone = torch.stack(list(Engine(model).generate([1, 2, 3], 6, params, seed=3, first_allowed=allowed)), dim=1)
    assert set(alone[:, 0].tolist()) <= {7, 11} and len(set(alone[:, 1:].flatten().tolist())) > 2
    seq = BatchEngine(model).add([1, 2, 3], 6, params, seed=3, first_allowed=allowed)
    assert torch.equal(next(seq), alone[:, 0])


def test_static_cache_step_gives_the_growing_cache_logits():
    """The compiled step's cache (``static=True``: attention over every position under a length
    mask, fixed shapes) computes, run eagerly, the logits of the growing cache, row by row."""
    model = tiny_gpt(**GPT_VARIANTS["llama-style-gqa"], block_size=24)
    with torch.inference_mode():
        grow = model.new_cache(2, 24)
        logits = model(torch.tensor([[3, 14, 15], [9, 2, 6]]), cache=grow)[:, -1]
        static = model.new_cache(2, 24, static=True)
        static.write_rows(0, grow, 2)
        for _ in range(10):
            nxt = logits.argmax(-1)[:, None]  # (2, 1)
            logits = model(nxt, cache=grow)[:, -1]
            torch.testing.assert_close(model(nxt, cache=static)[:, -1], logits, atol=1e-5, rtol=1e-5)
        assert static.lengths.tolist() == [13, 13] and static.k.shape[3] == 24


@pytest.mark.slow  # two compiles with inductor's GEMM autotuning: about a minute on 2 cores (make test-slow)
def test_compiled_decode_step_gives_the_eager_and_naive_greedy_tokens():
    """``--compile``: the fixed-shape compiled step (static cache, inductor's C++ GEMM) decodes the
    naive reference's greedy tokens while the sequence fits the context, and the eager engine's
    past it (both re-prefill the recent tokens when the context fills), at batch 1 and 2."""
    model = tiny_gpt(**GPT_VARIANTS["llama-style-gqa"], block_size=24)
    prompt = [3, 14, 15, 9, 2, 6]
    greedy = sp(40, temperature=0.0, frequency_penalty=1.0)
    compiled_engine = Engine(model, compiled=True)
    compiled = [int(t) for t in compiled_engine.generate(prompt, 1, greedy, seed=0)]
    assert compiled == [int(t) for t in Engine(model).generate(prompt, 1, greedy, seed=0)]
    fits = 24 - len(prompt)
    assert compiled[:fits] == naive_generate(model, prompt, dataclasses.replace(greedy, max_new_tokens=fits))
    pair = torch.stack(list(compiled_engine.generate(prompt, 2, greedy, seed=0)))  # (40, 2)
    assert pair[:, 0].tolist() == pair[:, 1].tolist() == compiled


def test_compile_is_refused_for_a_family_without_a_compiled_step(tmp_path):
    from aigc.api import load
    from aigc.data.tokenizer import train_char_tokenizer
    from aigc.errors import AigcError
    from aigc.formats.model_folder import save_model_folder

    tok = train_char_tokenizer(["abcdefg"])
    lstm = LSTMLM(LSTMConfig(vocab_size=tok.vocab_size, n_layer=1, d_embed=8, d_hidden=8))
    save_model_folder(tmp_path / "lstm", lstm, tok)
    with pytest.raises(AigcError, match="'lstm' model; the compiled decode step is for the gpt family"):
        load(tmp_path / "lstm", device="cpu", compile=True)
