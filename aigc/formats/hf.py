"""Hugging Face folders in and out: GPT-2, Llama and Qwen2 checkpoints as aigc's ``gpt``.

A Hugging Face model folder (``config.json`` with a ``model_type``, weights in
``model.safetensors`` or shards listed by ``model.safetensors.index.json``, and
``tokenizer.json``) is read straight into :class:`aigc.models.transformer.GPT`; every
aigc command that takes a model folder accepts one. Nothing is downloaded: a hub name
such as ``Qwen/Qwen2-0.5B`` is refused with a message to download it first, and
``pytorch_model.bin`` (a pickle) is never read.

How the architectures map onto :class:`GPTConfig` (from the ``transformers`` model
code of each family, ``modeling_gpt2.py``, ``modeling_llama.py``, ``modeling_qwen2.py``):

========================  ====================  ========================  =====================
                          GPT-2                 Llama                     Qwen2
========================  ====================  ========================  =====================
positions                 learned               rotary, rope_theta        rotary, rope_theta
norm (eps)                LayerNorm (1e-5)      RMSNorm (rms_norm_eps)    RMSNorm (rms_norm_eps)
MLP                       GELU, tanh approx.    SwiGLU                    SwiGLU
biases                    everywhere            attention_bias/mlp_bias   q, k, v only
attention                 multi-head            grouped-query             grouped-query
weights                   Conv1D (in, out),     Linear (out, in)          Linear (out, in)
                          q|k|v fused (c_attn)
========================  ====================  ========================  =====================

Both rotary layouts rotate pairs (i, i + D/2), as our model does, so q and k weights
need no permutation. :func:`export_hf` writes the reverse: the Llama layout for
RMSNorm/rotary/SwiGLU models (Qwen2 when only q, k, v have biases) and the GPT-2 layout
for LayerNorm/learned/GELU models with biases.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, processors

from aigc.atomic import atomic_dir, read_json, write_json
from aigc.config import SampleConfig
from aigc.errors import AigcError
from aigc.models.transformer import GPT, GPTConfig

SUPPORTED = ("gpt2", "llama", "qwen2")
INDEX = "model.safetensors.index.json"
EXPORT_MARK = "aigc_export.json"  # in every folder aigc export writes: only such a folder is ever replaced


# ---------------------------------------------------------------- config mapping


def _rope_theta(hf: dict, where: str) -> float:
    """rope_theta from transformers 5's ``rope_parameters`` or 4's top-level key; only unscaled rotary."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    if not isinstance(params, dict) or not isinstance(scaling, (dict, type(None))):
        raise AigcError(f"{where}: rope_parameters / rope_scaling must be JSON objects")
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if scaling not in (None, {}) or rope_type != "default":
        kind = rope_type if rope_type != "default" else (scaling or {}).get("rope_type", scaling)
        raise AigcError(f"{where}: rope scaling {kind!r} is not supported (only plain rotary positions)")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise AigcError(f"{where}: rope_theta = {theta!r}: expected a number")
    return float(theta)


def config_from_hf(hf: dict, where: str) -> GPTConfig:
    """The :class:`GPTConfig` of a Hugging Face ``config.json`` (already parsed).

    Raises:
        AigcError: an unsupported ``model_type`` (listing the supported ones) or a feature of a
            supported one that our model lacks (rope scaling, sliding windows, another activation).
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise AigcError(f"{where}: model_type {model_type!r} is not supported; aigc reads "
                        f"{', '.join(SUPPORTED)} checkpoints (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM)")

    def need(key):
        if key not in hf:
            raise AigcError(f"{where}: no {key!r} in a {model_type} config.json")
        if not isinstance(hf[key], int) or isinstance(hf[key], bool) or hf[key] < 1:
            raise AigcError(f"{where}: {key} = {hf[key]!r}: expected a positive integer")
        return hf[key]

    for key in ("layer_norm_epsilon", "rms_norm_eps"):
        if key in hf and (not isinstance(hf[key], (int, float)) or isinstance(hf[key], bool)):
            raise AigcError(f"{where}: {key} = {hf[key]!r}: expected a number")
    for key in ("n_inner", "head_dim", "num_key_value_heads"):
        if hf.get(key) is not None and (not isinstance(hf[key], int) or isinstance(hf[key], bool) or hf[key] < 1):
            raise AigcError(f"{where}: {key} = {hf[key]!r}: expected a positive integer or null")

    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise AigcError(f"{where}: activation_function {act!r} is not supported (gelu_new, gelu_pytorch_tanh)")
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False) \
                or hf.get("add_cross_attention", False):
            raise AigcError(f"{where}: GPT-2 variants with unscaled, layer-scaled or cross attention are not supported")
        return GPTConfig(
            vocab_size=need("vocab_size"), block_size=need("n_positions"), n_layer=need("n_layer"),
            n_head=need("n_head"), d_model=need("n_embd"), d_ff=hf.get("n_inner") or 0, bias=True,
            norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), positions="learned", mlp="gelu",
            tie_embeddings=hf.get("tie_word_embeddings", True))
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise AigcError(f"{where}: hidden_act {act!r} is not supported (silu)")
    if hf.get("use_sliding_window"):
        raise AigcError(f"{where}: sliding-window attention (use_sliding_window = true) is not supported")
    d_model, n_head = need("hidden_size"), need("num_attention_heads")
    head_dim = hf.get("head_dim") or d_model // n_head
    if model_type == "llama":
        attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
        if attn_bias != mlp_bias:
            raise AigcError(f"{where}: attention_bias = {attn_bias} with mlp_bias = {mlp_bias} is not supported "
                            "(both or neither)")
        bias, qkv_bias = attn_bias, False
    else:  # qwen2: biases on q, k, v only
        bias, qkv_bias = False, True
    return GPTConfig(
        vocab_size=need("vocab_size"), block_size=need("max_position_embeddings"),
        n_layer=need("num_hidden_layers"), n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
        d_model=d_model, d_ff=need("intermediate_size"), bias=bias, qkv_bias=qkv_bias,
        head_size=head_dim if head_dim * n_head != d_model else 0, norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), positions="rope", rope_theta=_rope_theta(hf, where), mlp="swiglu",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def layout_of(config: GPTConfig) -> str:
    """The Hugging Face architecture that holds ``config`` exactly: gpt2, llama or qwen2.

    Raises:
        AigcError: no supported architecture has this combination of choices (named).
    """
    if config.positions == "learned" and config.norm == "layernorm" and config.mlp == "gelu":
        if not config.bias or config.kv_heads != config.n_head or config.head_size:
            raise AigcError("the GPT-2 layout needs model.bias = true, n_kv_head = n_head and no head_size "
                            f"(got bias = {config.bias}, n_kv_head = {config.n_kv_head}, "
                            f"head_size = {config.head_size})")
        return "gpt2"
    if config.positions == "rope" and config.norm == "rmsnorm" and config.mlp == "swiglu":
        if config.qkv_bias and not config.bias:
            return "qwen2"
        return "llama"
    raise AigcError(f"no transformers architecture matches norm = {config.norm}, positions = {config.positions}, "
                    f"mlp = {config.mlp}: export needs layernorm/learned/gelu (GPT-2) or rmsnorm/rope/swiglu "
                    "(Llama, Qwen2)")


def config_to_hf(config: GPTConfig, layout: str, eos_id: int | None, bos_id: int | None, dtype: str) -> dict:
    """The transformers ``config.json`` of an exported model."""
    if layout == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_embd": config.d_model, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": config.ff_dim, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "tie_word_embeddings": config.tie_embeddings, "bos_token_id": bos_id, "eos_token_id": eos_id,
            "dtype": dtype,
        }
    hf = {
        "architectures": ["Qwen2ForCausalLM" if layout == "qwen2" else "LlamaForCausalLM"], "model_type": layout,
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.ff_dim,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_embeddings, "attention_dropout": 0.0,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "dtype": dtype,
    }
    if layout == "llama":
        hf.update(attention_bias=config.bias, mlp_bias=config.bias)
    else:
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf


# ---------------------------------------------------------------- weight names


def hf_names(config: GPTConfig, layout: str) -> dict[str, str]:
    """Our parameter name -> the Hugging Face name (for the GPT-2 layout, q/k/v map to the fused
    ``c_attn`` with a ``#q``/``#k``/``#v`` part marker, and Conv1D weights are transposed)."""
    names = {}
    if layout == "gpt2":
        names["tok_emb.weight"] = "transformer.wte.weight"
        names["pos_emb.weight"] = "transformer.wpe.weight"
        for i in range(config.n_layer):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                names[b + ours + ".weight"], names[b + ours + ".bias"] = h + theirs + ".weight", h + theirs + ".bias"
            for part in ("q", "k", "v"):
                names[f"{b}attn.{part}_proj.weight"] = f"{h}attn.c_attn.weight#{part}"
                names[f"{b}attn.{part}_proj.bias"] = f"{h}attn.c_attn.bias#{part}"
            for ours, theirs in (("attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
                                 ("mlp.down_proj", "mlp.c_proj")):
                names[f"{b}{ours}.weight"], names[f"{b}{ours}.bias"] = f"{h}{theirs}.weight", f"{h}{theirs}.bias"
        names["norm_f.weight"], names["norm_f.bias"] = "transformer.ln_f.weight", "transformer.ln_f.bias"
    else:
        names["tok_emb.weight"] = "model.embed_tokens.weight"
        for i in range(config.n_layer):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            names[b + "norm1.weight"] = h + "input_layernorm.weight"
            names[b + "norm2.weight"] = h + "post_attention_layernorm.weight"
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                names[f"{b}attn.{proj}.weight"] = f"{h}self_attn.{proj}.weight"
                names[f"{b}attn.{proj}.bias"] = f"{h}self_attn.{proj}.bias"
            for proj in ("gate_proj", "up_proj", "down_proj"):
                names[f"{b}mlp.{proj}.weight"] = f"{h}mlp.{proj}.weight"
                names[f"{b}mlp.{proj}.bias"] = f"{h}mlp.{proj}.bias"
        names["norm_f.weight"] = "model.norm.weight"
    names["lm_head.weight"] = "lm_head.weight"
    return names


def hf_names_for_module(ours: str) -> str:
    """The transformers module path (Llama/Qwen2) of one of our block's linear layers:
    ``blocks.0.attn.q_proj`` -> ``model.layers.0.self_attn.q_proj``."""
    m = re.fullmatch(r"blocks\.(\d+)\.(attn|mlp)\.(\w+)", ours)
    if not m:
        raise AigcError(f"{ours}: not a linear module of a transformer block")
    return f"model.layers.{m[1]}.{'self_attn' if m[2] == 'attn' else 'mlp'}.{m[3]}"


# ---------------------------------------------------------------- reading


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face folder: ``model.safetensors`` or the shards its index lists.

    Raises:
        AigcError: no safetensors weights (a pickle-only folder is named as such), a shard the
            index lists that is missing, or a corrupt file.
    """
    single, index = folder / "model.safetensors", folder / INDEX
    if index.is_file():
        try:
            weight_map = read_json(index)["weight_map"]
            files = sorted(set(weight_map.values()))
            if not all(isinstance(f, str) and f and "/" not in f and f != ".." for f in files):
                raise ValueError("weight_map values must be file names in the folder")
        except (AigcError, ValueError, KeyError, TypeError, AttributeError):
            raise AigcError(f"{index}: corrupt index (expected {{\"weight_map\": {{name: file}}}})") from None
    elif single.is_file():
        files = [single.name]
    else:
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        extra = (f"; found {', '.join(sorted(pickles))}, which aigc does not read (pickle files can run code); "
                 "convert them to safetensors first") if pickles else ""
        raise AigcError(f"{folder}: no weights (model.safetensors or {INDEX}){extra}")
    state = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise AigcError(f"{path}: listed in {INDEX} but missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise AigcError(f"{path}: truncated or corrupt weights ({str(e).splitlines()[0]})") from None
    return state


def state_from_hf(hf_state: dict[str, torch.Tensor], config: GPTConfig, layout: str,
                  where: str) -> dict[str, torch.Tensor]:
    """Our state dict (float32) from a Hugging Face one.

    Raises:
        AigcError: a tensor the config needs is missing, or one has the wrong shape (named).
    """
    if layout == "gpt2" and not any(k.startswith("transformer.") for k in hf_state):
        hf_state = {"transformer." + k if k != "lm_head.weight" else k: v for k, v in hf_state.items()}
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = GPT(config).state_dict()
    names = hf_names(config, layout)
    c, kv = config.n_head * config.head_dim, config.kv_heads * config.head_dim
    state = {}
    for ours, shape in ((k, tuple(v.shape)) for k, v in expected.items()):
        if ours == "lm_head.weight" and config.tie_embeddings:
            continue
        theirs = names[ours]
        key, _, part = theirs.partition("#")
        if key not in hf_state:
            raise AigcError(f"{where}: tensor {key!r} is missing (config.json implies it)")
        t = hf_state[key]
        if layout == "gpt2" and key.endswith(".weight") and t.dim() == 2 and "wte" not in key and "wpe" not in key \
                and key != "lm_head.weight":
            t = t.t()  # Conv1D stores (in, out)
        if part:  # q | k | v of the fused c_attn
            start = {"q": 0, "k": c, "v": c + kv}[part]
            t = t[start:start + (c if part == "q" else kv)]
        if tuple(t.shape) != shape:
            raise AigcError(f"{where}: tensor {key!r} has shape {tuple(hf_state[key].shape)}, which does not match "
                            f"config.json (expected {shape if not part else 'a fused q|k|v'})")
        state[ours] = t.float()
    return state


def load_hf_folder(folder: str | Path) -> GPT:
    """Our :class:`GPT` (float32, eval mode) with the weights of a Hugging Face folder.

    Raises:
        AigcError: see :func:`config_from_hf`, :func:`read_hf_weights`, :func:`state_from_hf`.
    """
    folder = Path(folder)
    where = str(folder / "config.json")
    hf = read_json(folder / "config.json", dict)
    config = config_from_hf(hf, where)
    try:
        config.validate()
    except AigcError as e:
        raise AigcError(f"{where}: {e}") from None
    state = state_from_hf(read_hf_weights(folder), config, hf["model_type"], str(folder))
    model = GPT(config)
    model.load_state_dict(state, strict=False)
    return model.eval()


def sample_defaults_from_hf(path: Path) -> SampleConfig:
    """Our sampling defaults from a transformers ``generation_config.json`` (temperature, top-p,
    top-k, repetition penalty, max_new_tokens; greedy when ``do_sample`` is false). A missing or
    unreadable file gives our defaults."""
    defaults = SampleConfig()
    try:
        raw = read_json(path, dict)
    except AigcError:
        return defaults
    if raw.get("do_sample") is False:
        defaults.temperature = 0.0
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                         ("repetition_penalty", "repetition_penalty"), ("max_new_tokens", "max_new_tokens")):
        value = raw.get(theirs)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (ours != "temperature"
                                                                               or raw.get("do_sample") is not False):
            setattr(defaults, ours, type(getattr(defaults, ours))(value))
    return defaults


# ---------------------------------------------------------------- writing


def state_to_hf(model: GPT, layout: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of ``model`` in ``layout`` (tied lm_head left out, as transformers saves it)."""
    config = model.config
    names = hf_names(config, layout)
    state = model.state_dict()
    out, fused = {}, {}
    for ours, t in state.items():
        if ours == "lm_head.weight" and config.tie_embeddings:
            continue
        key, _, part = names[ours].partition("#")
        t = t.detach().to("cpu", dtype)
        if part:
            fused.setdefault(key, {})[part] = t
            continue
        if layout == "gpt2" and t.dim() == 2 and key.endswith(".weight") and "wte" not in key \
                and "wpe" not in key and key != "lm_head.weight":
            t = t.t()
        out[key] = t.contiguous()
    for key, parts in fused.items():
        t = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[key] = (t.t() if t.dim() == 2 else t).contiguous()
    return out


def parse_size(text: str) -> int:
    """Bytes of a size such as ``2GB``, ``500MB``, ``10KB`` or ``123`` (decimal units, as transformers uses).

    Raises:
        AigcError: not a size.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", str(text), re.I)
    if not m:
        raise AigcError(f"--max-shard-size {text!r}: expected a size like 2GB, 500MB or 100KB")
    unit = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[(m[2] or "").upper()]
    size = int(float(m[1]) * unit)
    if size < 1:
        raise AigcError(f"--max-shard-size {text!r}: must be positive")
    return size


def write_weights(folder: Path, state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[str]:
    """``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` + index when larger than
    ``max_shard_bytes`` (a tensor is never split; shards fill in name order). Returns the file names."""
    shards, current, size = [], {}, 0
    for key in sorted(state):
        n = state[key].numel() * state[key].element_size()
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = state[key]
        size += n
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    files, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json(folder / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return files + [INDEX]


def export_hf(model: GPT, tokenizer, out: str | Path, dtype: str = "float32", max_shard_size: str = "2GB",
              generation: dict | None = None, chat=None) -> str:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder that ``transformers``
    ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load.

    Files: config.json, model.safetensors (or shards + index), tokenizer.json,
    tokenizer_config.json (the chat template when there is one), generation_config.json
    (eos and the sampling defaults). The folder is written atomically.

    Args:
        dtype: float32 | float16 | bfloat16, the stored weights.
        generation: our sampling defaults (temperature, top_p, top_k) to carry over.
        chat: the model's :class:`aigc.data.chat.ChatTemplate`, or None.
    Returns:
        the layout written: gpt2, llama or qwen2.
    Raises:
        AigcError: a model no transformers architecture holds, or a bad dtype/size.
    """
    if model.family != "gpt":
        raise AigcError(f"export writes transformers models of the gpt family; this is a {model.family!r} model")
    layout = layout_of(model.config)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise AigcError(f"--dtype {dtype!r}: expected one of {', '.join(dtypes)}")
    shard_bytes = parse_size(max_shard_size)
    eos_ids = [tokenizer.eot_id]
    if chat is not None and chat.eos_token and tokenizer.tk.token_to_id(chat.eos_token) is not None:
        eos_ids.append(tokenizer.tk.token_to_id(chat.eos_token))
    eos_ids = list(dict.fromkeys(eos_ids))
    eos = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    state = state_to_hf(model, layout, dtypes[dtype])
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_weights(tmp, state, shard_bytes)
        # every aigc prompt and document starts with the tokenizer's bos (<|endoftext|> for our
        # vocabularies): declare it, and have transformers' tokenizer add it as ours does
        bos = tokenizer.bos_id
        bos_token = tokenizer.tk.id_to_token(bos)
        write_json(tmp / "config.json", config_to_hf(model.config, layout, eos, bos, dtype))
        tk = Tokenizer.from_str(tokenizer.tk.to_str())
        if tk.post_processor is None:
            tk.post_processor = processors.TemplateProcessing(
                single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos)])
        tk.save(str(tmp / "tokenizer.json"))
        tok_config = {**tokenizer.config, "tokenizer_class": "PreTrainedTokenizerFast",
                      "model_max_length": model.config.block_size}
        tok_config.setdefault("eos_token", tokenizer.eot_token)
        tok_config.setdefault("bos_token", bos_token)
        if tokenizer.tk.token_to_id("<|endoftext|>") is not None:
            tok_config.setdefault("pad_token", "<|endoftext|>")
        if chat is not None:
            tok_config["chat_template"] = chat.template
            if chat.eos_token:
                tok_config["eos_token"] = chat.eos_token
        write_json(tmp / "tokenizer_config.json", tok_config)
        # no pad_token_id: our prompts start with <|endoftext|>, and transformers would mask a prompt's
        # pad tokens out of attention when it infers the mask
        gen = {"eos_token_id": eos, "bos_token_id": bos}
        if generation:
            sampled = generation.get("temperature", 1.0) > 0
            gen.update(do_sample=sampled, max_new_tokens=generation.get("max_new_tokens"))
            if sampled:
                gen.update(temperature=generation.get("temperature"), top_p=generation.get("top_p", 1.0),
                           top_k=generation.get("top_k") or None)
        write_json(tmp / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
        write_json(tmp / EXPORT_MARK, {"written_by": "aigc export", "layout": layout, "dtype": dtype})
    return layout
