"""GGUF export, read back with the `gguf` package's reader, and run by llama.cpp where it is installed.

The reader checks what llama.cpp will see: architecture, hyperparameters, tensor names and
shapes, the weights themselves (q/k rows un-permuted back to ours), the vocabulary and merges.
Where `llama_cpp` (PyPI llama-cpp-python, built from source) is
importable (`make llamacpp`), llama.cpp itself loads the file, tokenizes prompts to aigc's ids and decodes
greedily to aigc's tokens, for tang-base (character vocabulary) and a byte-level BPE model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aigc.config import SampleConfig
from aigc.data.tokenizer import Tokenizer, train_bpe_tokenizer
from aigc.errors import AigcError
from aigc.formats.gguf_file import export_gguf, tokenizer_fields
from aigc.formats.model_folder import load_model_folder, save_model_folder
from aigc.folders import resolve_model_folder
from aigc.generate.engine import Engine
from aigc.models.lstm import LSTMConfig, LSTMLM
from aigc.models.transformer import GPT, GPTConfig
from conftest import CORES, run_cli, tang_documents

gguf = pytest.importorskip("gguf")
torch.set_num_threads(CORES)
TANG = resolve_model_folder("tang-base")


def field(reader, key):
    return reader.fields[key].contents()


def weights(reader) -> dict[str, np.ndarray]:
    """Each tensor as float32 in our (out, in) order."""
    out = {}
    for t in reader.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(a, dtype=np.float32).reshape(list(reversed([int(n) for n in t.shape])))
    return out


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's (2i, 2i+1) rotary rows back to our (i, i + D/2)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


@pytest.fixture(scope="module")
def bpe_folders(tmp_path_factory):
    """A tiny Llama-layout and a tiny GPT-2-layout model with one byte-level BPE tokenizer."""
    root = tmp_path_factory.mktemp("gguf")
    tok = train_bpe_tokenizer(tang_documents(100) + ["hello world, the quick brown fox"], 320, show_progress=False)
    torch.manual_seed(0)
    llama = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                          d_model=64, bias=False, norm="rmsnorm", positions="rope", mlp="swiglu"))
    gpt2 = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, d_model=64))
    with torch.no_grad():  # norms off their init so a wrong mapping shows
        for m in (llama, gpt2):
            for p in m.parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
    save_model_folder(root / "llama", llama, tok)
    save_model_folder(root / "gpt2", gpt2, tok)
    return {"llama": root / "llama", "gpt2": root / "gpt2"}


def test_tang_base_round_trip(tmp_path):
    out = tmp_path / "tang.gguf"
    r = run_cli("export", str(TANG), str(out))
    assert r.returncode == 0, r.stderr
    assert "llama.cpp architecture llama" in r.stdout
    model = load_model_folder(TANG)
    c = model.config
    reader = gguf.GGUFReader(str(out))
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == c.n_layer
    assert field(reader, "llama.attention.head_count_kv") == c.kv_heads
    assert field(reader, "llama.context_length") == c.block_size
    # the vocabulary: one single-character piece per id, the space as U+2581, specials as CONTROL
    vocab = json.loads((TANG / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == c.vocab_size == len(vocab)
    for piece, i in vocab.items():
        assert tokens[i] == ("\u2581" if piece == " " else piece)
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[0] == 3 and sum(t == 3 for t in types) == 3  # <|endoftext|>, <|im_start|>, <|im_end|>
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.add_space_prefix") is False
    assert "<|im_start|>" in field(reader, "tokenizer.chat_template")
    # weights: tied embedding once, q/k permuted for llama.cpp's rotary pairing, the rest as ours
    w = weights(reader)
    assert "output.weight" not in w and len(w) == 2 + 9 * c.n_layer
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert w["token_embd.weight"].shape == (c.vocab_size, c.d_model)
    np.testing.assert_array_equal(w["token_embd.weight"], state["tok_emb.weight"])
    np.testing.assert_array_equal(unpermute(w["blk.1.attn_q.weight"], c.n_head), state["blocks.1.attn.q_proj.weight"])
    np.testing.assert_array_equal(unpermute(w["blk.1.attn_k.weight"], c.kv_heads),
                                  state["blocks.1.attn.k_proj.weight"])
    np.testing.assert_array_equal(w["blk.5.ffn_gate.weight"], state["blocks.5.mlp.gate_proj.weight"])
    assert not np.array_equal(w["blk.1.attn_q.weight"], state["blocks.1.attn.q_proj.weight"])


def test_q8_0_and_bpe_layouts(bpe_folders, tmp_path):
    tok = Tokenizer.load(bpe_folders["llama"])
    spec = json.loads(tok.tk.to_str())
    for arch, folder in bpe_folders.items():
        model = load_model_folder(folder)
        out = tmp_path / f"{arch}.gguf"
        summary = export_gguf(model, tok, out, "q8_0")
        assert summary["arch"] == arch and summary["types"]["Q8_0"] > 0
        reader = gguf.GGUFReader(str(out))
        assert field(reader, "tokenizer.ggml.model") == "gpt2"
        assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
        assert field(reader, "tokenizer.ggml.merges") == [" ".join(m) if isinstance(m, list) else m
                                                          for m in spec["model"]["merges"]]
        assert field(reader, "tokenizer.ggml.tokens")[300:305] == [tok.tk.id_to_token(i) for i in range(300, 305)]
        w = weights(reader)
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        if arch == "gpt2":
            assert w["position_embd.weight"].shape == (64, 64)
            qkv = np.concatenate([state[f"blocks.0.attn.{p}_proj.weight"] for p in "qkv"])
            np.testing.assert_allclose(w["blk.0.attn_qkv.weight"], qkv, atol=2e-3)  # 8-bit blocks
            np.testing.assert_array_equal(w["blk.0.attn_norm.bias"], state["blocks.0.norm1.bias"])  # 1-D stay f32
        else:
            np.testing.assert_allclose(w["blk.0.ffn_down.weight"], state["blocks.0.mlp.down_proj.weight"], atol=2e-3)
            np.testing.assert_array_equal(w["blk.0.attn_norm.weight"], state["blocks.0.norm1.weight"])


def test_bad_gguf_exports(bpe_folders, tmp_path):
    tok = Tokenizer.load(bpe_folders["llama"])
    lstm = tmp_path / "lstm"
    save_model_folder(lstm, LSTMLM(LSTMConfig(vocab_size=tok.vocab_size, d_embed=16, d_hidden=16, n_layer=1)), tok)
    r = run_cli("export", str(lstm), str(tmp_path / "x.gguf"))
    assert r.returncode == 2 and "llama.cpp has no architecture for a 'lstm' model" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
    keep = tmp_path / "notes.gguf"  # a file aigc did not write is never replaced
    keep.write_text("mine")
    r = run_cli("export", str(bpe_folders["llama"]), str(keep))
    assert r.returncode == 2 and "refusing to replace it" in r.stderr and keep.read_text() == "mine"
    r = run_cli("export", str(bpe_folders["llama"]), str(tmp_path / "y.gguf"), "--type", "q4_k")
    assert r.returncode == 2 and "invalid choice: 'q4_k'" in r.stderr
    model = load_model_folder(bpe_folders["llama"])
    small = train_bpe_tokenizer(["abc"], 260, show_progress=False)
    with pytest.raises(AigcError, match="tokenizer has 2.. tokens but the embedding has 320 rows"):
        export_gguf(model, small, tmp_path / "z.gguf")
    again = tmp_path / "again.gguf"  # an earlier export is replaced
    export_gguf(model, tok, again)
    assert export_gguf(model, tok, again, "f16")["types"]["F16"] > 0
    hf_like = Tokenizer.load(TANG)
    hf_like.tk.pre_tokenizer = None
    with pytest.raises(AigcError, match="would not tokenize the same way"):
        tokenizer_fields(hf_like)


# ---------------------------------------------------------------- llama.cpp itself


def greedy_pair(folder, gguf_path, prompt: str, n: int = 24):
    """(aigc's prompt ids, llama.cpp's), (aigc's greedy tokens, llama.cpp's)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp` "
                                    "builds llama.cpp from source, 10 to 20 minutes)")
    tok = Tokenizer.load(folder)
    ours = [tok.bos_id] + tok.encode(prompt)
    model = load_model_folder(folder)
    settings = SampleConfig(temperature=0.0, max_new_tokens=n, repetition_penalty=1.0)
    gen = [int(t) for t, _ in zip(Engine(model).generate(ours, 1, settings, seed=0), range(n))]
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=model.config.block_size, n_threads=CORES, verbose=False,
                          logits_all=False)
    theirs = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    out = []
    for t in llm.generate(theirs, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return (ours, theirs), (gen, out)


def test_llama_cpp_runs_tang_base_greedy_like_aigc(tmp_path):
    out = tmp_path / "tang.gguf"
    export_gguf(load_model_folder(TANG), Tokenizer.load(TANG), out)
    (ours, theirs), (gen, llama_gen) = greedy_pair(TANG, out, "西江月 明月别枝惊鹊，清风半夜鸣蝉。")
    assert theirs == ours
    assert llama_gen == gen


def test_llama_cpp_runs_a_bpe_model_greedy_like_aigc(bpe_folders, tmp_path):
    folder = bpe_folders["llama"]
    out = tmp_path / "bpe.gguf"
    export_gguf(load_model_folder(folder), Tokenizer.load(folder), out)
    (ours, theirs), (gen, llama_gen) = greedy_pair(folder, out, "hello world, the quick brown fox 春眠")
    assert theirs == ours
    assert llama_gen == gen
