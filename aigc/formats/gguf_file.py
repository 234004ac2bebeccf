"""GGUF export: one file that llama.cpp (and everything built on it) loads and runs.

Written with the ``gguf`` package (llama.cpp's own writer, on PyPI). The architecture is the
one :func:`aigc.formats.hf.layout_of` picks for transformers, under llama.cpp's names:

- ``llama`` (RMSNorm, rotary, SwiGLU, no biases): llama.cpp rotates adjacent pairs
  (2i, 2i+1) where we rotate (i, i + D/2), so the rows of q and k are permuted within each
  head, as llama.cpp's own converter does for Hugging Face Llama weights.
- ``qwen2`` (the same with q/k/v biases): llama.cpp rotates (i, i + D/2) here, no permutation.
- ``gpt2`` (LayerNorm, learned positions, GELU, biases): q, k, v fused into ``attn_qkv``.

Tied embeddings are written once (``token_embd``); llama.cpp's loaders of all three use it as
the output matrix when ``output.weight`` is absent.

Tokenizers (``tokenizer.ggml.*``): aigc's byte-level BPE is written as llama.cpp's ``gpt2``
tokenizer (its vocabulary and merges as in tokenizer.json, pre-tokenizer ``gpt-2``, the GPT-2
regex our BPE splits with). aigc's character vocabulary is written as a SentencePiece-style
``llama`` vocabulary of single-character pieces, with the space written as U+2581 (the
SentencePiece whitespace mark, which llama.cpp turns spaces into before looking pieces up)
and no space prefix: with no piece longer than one character no merge ever applies, so every
character maps to its own id, as in aigc. Special tokens are CONTROL tokens. Other tokenizers
(those of imported Hugging Face models) are refused rather than written in a form llama.cpp
would tokenize differently.

Weight types (``--type``): ``f32``; ``f16``; ``q8_0`` (blocks of 32 int8 values with one
float16 scale, llama.cpp's 8-bit format). Norm weights and biases stay float32, as in
llama.cpp's converter; a matrix whose rows are not a multiple of 32 long is written f16 under
``q8_0``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from aigc.atomic import atomic_path
from aigc.errors import AigcError
from aigc.formats.hf import layout_of
from aigc.version import __version__

TYPES = ("f32", "f16", "q8_0")
MARK = "aigc.version"  # metadata key in every file aigc writes: only such a file is ever replaced
SPACE = "\u2581"  # SentencePiece's whitespace mark


def _gguf():
    try:
        import gguf
    except ImportError:  # a dependency of aigc; missing only in a broken install
        raise AigcError("GGUF export needs the gguf package: pip install gguf") from None
    return gguf


def check_exportable(model: torch.nn.Module) -> str:
    """The llama.cpp architecture of ``model``: ``llama``, ``qwen2`` or ``gpt2``.

    Raises:
        AigcError: a family llama.cpp has no architecture for (LSTM, GAN, VAE), or a GPT whose
            combination of choices none of the three holds.
    """
    family = getattr(model, "family", type(model).__name__)
    if family != "gpt":
        raise AigcError(f"GGUF export is for the gpt family (Transformer language models); llama.cpp has no "
                        f"architecture for a {family!r} model")
    return layout_of(model.config)


def _permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of q or k ``(H * D, C)`` from our (i, i + D/2) pairing to llama.cpp's (2i, 2i+1)."""
    out, rest = w.shape[0], w.shape[1:]
    d = out // n_head
    return w.reshape(n_head, 2, d // 2, *rest).transpose(1, 2).reshape(out, *rest)


def gguf_tensors(model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """llama.cpp's tensor name -> float32 tensor on CPU, in the order the file lists them.

    Shapes are ours (a linear weight ``(out, in)``); the writer stores them reversed, as ggml's
    ``ne`` order has it.
    """
    c = model.config
    s = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    out = {"token_embd.weight": s["tok_emb.weight"]}
    if arch == "gpt2":
        out["position_embd.weight"] = s["pos_emb.weight"]
    for i in range(c.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        out[g + "attn_norm.weight"] = s[b + "norm1.weight"]
        out[g + "ffn_norm.weight"] = s[b + "norm2.weight"]
        if arch == "gpt2":
            out[g + "attn_norm.bias"], out[g + "ffn_norm.bias"] = s[b + "norm1.bias"], s[b + "norm2.bias"]
            for part in ("weight", "bias"):
                out[g + f"attn_qkv.{part}"] = torch.cat([s[f"{b}attn.{p}_proj.{part}"] for p in "qkv"])
            names = (("attn_output", "attn.o_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"))
        else:
            q, k = s[b + "attn.q_proj.weight"], s[b + "attn.k_proj.weight"]
            if arch == "llama":
                q, k = _permute_rope(q, c.n_head), _permute_rope(k, c.kv_heads)
            out[g + "attn_q.weight"], out[g + "attn_k.weight"] = q, k
            out[g + "attn_v.weight"] = s[b + "attn.v_proj.weight"]
            if arch == "qwen2":
                out[g + "attn_q.bias"], out[g + "attn_k.bias"] = s[b + "attn.q_proj.bias"], s[b + "attn.k_proj.bias"]
                out[g + "attn_v.bias"] = s[b + "attn.v_proj.bias"]
            names = (("attn_output", "attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                     ("ffn_down", "mlp.down_proj"))
        for theirs, ours in names:
            out[g + theirs + ".weight"] = s[b + ours + ".weight"]
            if arch == "gpt2":
                out[g + theirs + ".bias"] = s[b + ours + ".bias"]
    out["output_norm.weight"] = s["norm_f.weight"]
    if arch == "gpt2":
        out["output_norm.bias"] = s["norm_f.bias"]
    if not c.tie_embeddings:
        out["output.weight"] = s["lm_head.weight"]
    return out


def tokenizer_fields(tokenizer) -> dict:
    """The ``tokenizer.ggml.*`` content of ``tokenizer`` (an :class:`aigc.data.tokenizer.Tokenizer`):
    ``model``, ``pre``, ``tokens``, ``types``, ``merges`` (BPE only), ``scores`` (char only).

    Raises:
        AigcError: a tokenizer that is neither aigc's character vocabulary nor byte-level BPE with
            the GPT-2 split, or a character vocabulary holding U+2581 itself.
    """
    spec = json.loads(tokenizer.tk.to_str())
    vocab = tokenizer.tk.get_vocab()
    specials = {t.content for t in tokenizer.tk.get_added_tokens_decoder().values() if t.special}
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise AigcError("the tokenizer's ids are not 0..V-1 without gaps; GGUF lists tokens by id")
    pre, model = spec.get("pre_tokenizer") or {}, spec["model"]
    types = [3 if tok in specials else 1 for tok, _ in by_id]  # CONTROL or NORMAL
    if tokenizer.kind == "char" and pre.get("type") == "FixedLength" and not spec.get("normalizer"):
        if SPACE in vocab:
            raise AigcError(f"the character vocabulary holds U+2581 ({SPACE}), the mark llama.cpp's "
                            "SentencePiece tokenizer uses for a space; it cannot be written as GGUF")
        tokens = [SPACE if tok == " " else tok for tok, _ in by_id]
        return {"model": "llama", "pre": "default", "tokens": tokens, "types": types,
                "scores": [0.0] * len(tokens)}
    if model.get("type") == "BPE" and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) \
            and not pre.get("add_prefix_space") and not spec.get("normalizer"):
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return {"model": "gpt2", "pre": "gpt-2", "tokens": [tok for tok, _ in by_id], "types": types,
                "merges": merges}
    raise AigcError(f"GGUF export writes aigc's own tokenizers (character-level, byte-level BPE with the GPT-2 "
                    f"split); this one has model {model.get('type')!r} and pre-tokenizer {pre.get('type')!r}, "
                    "which llama.cpp would not tokenize the same way")


def _write_metadata(w, model, tokenizer, fields: dict, arch: str, type_: str, chat_template: str | None,
                    name: str) -> None:
    gguf, c = _gguf(), model.config
    w.add_name(name)
    w.add_string(MARK, __version__)
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.ff_dim)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.kv_heads)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type_])
    w.add_vocab_size(c.vocab_size)
    if arch == "gpt2":
        w.add_layer_norm_eps(c.norm_eps)
    else:
        w.add_layer_norm_rms_eps(c.norm_eps)
        w.add_rope_freq_base(c.rope_theta)
        w.add_rope_dimension_count(c.head_dim)
        if c.head_dim * c.n_head != c.d_model:
            w.add_key_length(c.head_dim)
            w.add_value_length(c.head_dim)
    w.add_tokenizer_model(fields["model"])
    w.add_tokenizer_pre(fields["pre"])
    w.add_token_list(fields["tokens"])
    w.add_token_types(fields["types"])
    if "merges" in fields:
        w.add_token_merges(fields["merges"])
    if "scores" in fields:
        w.add_token_scores(fields["scores"])
        w.add_add_space_prefix(False)
    w.add_bos_token_id(tokenizer.bos_id)
    w.add_eos_token_id(tokenizer.eot_id)
    w.add_add_bos_token(True)  # aigc opens every prompt with the document-boundary (or bos) token
    w.add_add_eos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)


def _encode(gguf, t: torch.Tensor, type_: str) -> tuple[np.ndarray, object]:
    """``t`` as the array to write and its ggml type (None: the array's own dtype)."""
    a = t.contiguous().numpy()
    if t.dim() == 1 or type_ == "f32":
        return a.astype(np.float32), None
    if type_ == "q8_0" and a.shape[-1] % 32 == 0:
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return a.astype(np.float16), None


def export_gguf(model: torch.nn.Module, tokenizer, out: str | Path, type_: str = "f32",
                chat_template: str | None = None, name: str = "aigc model") -> dict:
    """Write ``model`` and ``tokenizer`` as one GGUF file at ``out`` (atomically).

    Returns a summary: ``arch``, ``tensors`` (count), ``types`` (ggml type name -> count), ``bytes``.

    Raises:
        AigcError: an unknown ``type_``, a family or layout llama.cpp has no architecture for, a
            tokenizer that cannot be written (see :func:`tokenizer_fields`), a vocabulary whose size
            is not the embedding's row count, or ``out`` that is not ours to replace.
    """
    if type_ not in TYPES:
        raise AigcError(f"--type {type_!r}: expected one of {', '.join(TYPES)}")
    arch = check_exportable(model)
    rows = model.config.vocab_size
    if tokenizer.vocab_size != rows:
        raise AigcError(f"the tokenizer has {tokenizer.vocab_size} tokens but the embedding has {rows} rows; "
                        "llama.cpp needs one token per row")
    fields = tokenizer_fields(tokenizer)  # refused before anything touches the disk
    gguf, out = _gguf(), Path(out)
    _check_replaceable(out)
    counts: dict[str, int] = {}
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        _write_metadata(w, model, tokenizer, fields, arch, type_, chat_template, name)
        tensors = gguf_tensors(model, arch)
        for key, t in tensors.items():
            data, raw = _encode(gguf, t, type_)
            w.add_tensor(key, data, raw_dtype=raw)
            kind = raw.name if raw is not None else {np.float32: "F32", np.float16: "F16"}[data.dtype.type]
            counts[kind] = counts.get(kind, 0) + 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"arch": arch, "tensors": len(tensors), "types": counts, "bytes": out.stat().st_size}


def _check_replaceable(out: Path) -> None:
    """Refuse to replace an existing file that aigc did not write (no :data:`MARK` in its metadata)."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_file() and not out.is_symlink():
        try:
            if MARK in _gguf().GGUFReader(str(out)).fields:
                return
        except Exception:  # not a GGUF file at all
            pass
    raise AigcError(f"{out}: exists and is not a GGUF file aigc wrote; refusing to replace it")
