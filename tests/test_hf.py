"""Hugging Face folders in and out, against the real `transformers` and `peft`.

Tiny randomly initialised GPT-2, Llama and Qwen2 models are built by transformers in the
test itself (no download): our logits must equal theirs within 1e-4 in float32 and greedy
generation must give the same tokens; then the same after `aigc export` and a reload in
transformers. A LoRA run's adapter must load in peft on the exported base and give the
logits of our merged model.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from aigc.api import load  # noqa: E402
from aigc.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from aigc.errors import AigcError  # noqa: E402
from aigc.generate.engine import Engine  # noqa: E402
from aigc.config import SampleConfig  # noqa: E402
from aigc.formats.model_folder import load_model_folder  # noqa: E402
from aigc.formats.hf import export_hf  # noqa: E402
from aigc.models.transformer import GPT, GPTConfig  # noqa: E402
from conftest import CORES, run_cli  # noqa: E402

torch.set_num_threads(CORES)
VOCAB = 300
TEXT = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine", "all that glitters is gold"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXT * 20, VOCAB, show_progress=False)


def hf_config(kind: str):
    common = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    if kind == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
    if kind == "llama":
        return transformers.LlamaConfig(hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        rope_theta=500.0, rms_norm_eps=1e-5, **common)
    return transformers.Qwen2Config(hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
                                    **common)


def make_hf_folder(kind: str, folder, tokenizer, shard: str | None = None):
    """A tiny random transformers model (norm weights and biases moved off their init so they matter)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(kind)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder, max_shard_size=shard) if shard else model.save_pretrained(folder)
    tokenizer.tk.save(str(folder / "tokenizer.json"))
    return model


def greedy_ours(model, prompt: list[int], n: int) -> list[int]:
    steps = Engine(model).generate(prompt, 1, SampleConfig(temperature=0.0, max_new_tokens=n), seed=0)
    return [int(next(steps)[0]) for _ in range(n)]


def greedy_theirs(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def assert_same(ours, theirs, ids):
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-4
    prompt = ids[0, :5].tolist()
    assert greedy_ours(ours, prompt, 24) == greedy_theirs(theirs, prompt, 24)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_import_and_export_match_transformers(kind, tokenizer, tmp_path):
    theirs = make_hf_folder(kind, tmp_path / "hf", tokenizer, shard="20KB" if kind == "llama" else None)
    if kind == "llama":  # sharded: the index and several files
        assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    ids = torch.randint(1, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    ours = load_model_folder(tmp_path / "hf")
    assert_same(ours, theirs, ids)

    # export ours and reload in transformers: same model again, sharded or not
    tm = load(tmp_path / "hf", device="cpu")
    layout = export_hf(tm.model, tm.tokenizer, tmp_path / "out", max_shard_size="30KB" if kind == "gpt2" else "2GB")
    assert layout == kind
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert_same(ours, again, ids)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tok(TEXT[0])["input_ids"] == [tokenizer.bos_id] + tokenizer.encode(TEXT[0])  # aigc's prompts open so


def test_our_model_exports_as_llama_and_gpt2(tokenizer, tmp_path):
    for name, cfg in {
        "llama": GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=32, bias=False,
                           norm="rmsnorm", positions="rope", mlp="swiglu", tie_embeddings=True),
        "gpt2": GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, d_model=32),
    }.items():
        torch.manual_seed(0)
        ours = GPT(cfg).eval()
        assert export_hf(ours, tokenizer, tmp_path / name) == name
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
        assert_same(ours, theirs, torch.randint(1, VOCAB, (1, 30), generator=torch.Generator().manual_seed(2)))


def test_lora_adapter_loads_in_peft_with_merged_logits(tmp_path):
    """A LoRA run on an exported base: its adapter, exported in PEFT layout, gives in peft the
    logits of our merged model and of the merged export."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXT * 30), encoding="utf-8")
    base_cfg = tmp_path / "base.toml"
    base_cfg.write_text(
        f'[data]\nsource = "{corpus}"\ntokenizer = "bpe"\nvocab_size = 300\nprepared_dir = "{tmp_path / "p1"}"\n'
        '[model]\nfamily = "gpt"\nblock_size = 32\nn_layer = 2\nn_head = 4\nn_kv_head = 2\nd_model = 32\n'
        'bias = false\nnorm = "rmsnorm"\npositions = "rope"\nmlp = "swiglu"\n'
        f'[train]\nout_dir = "{tmp_path / "base"}"\nbatch_size = 4\nmax_steps = 10\nwarmup_steps = 2\n'
        f'eval_interval = 10\neval_batches = 1\nthreads = {CORES}\n', encoding="utf-8")
    assert run_cli("train", str(base_cfg), "--quiet").returncode == 0
    r = run_cli("export", str(tmp_path / "base"), str(tmp_path / "base-hf"))
    assert r.returncode == 0, r.stderr
    r = run_cli("train", str(base_cfg), "--quiet", "--init-from", str(tmp_path / "base-hf"), "--lora-rank", "4",
                f"--train.out_dir={tmp_path / 'lora'}", "--train.lora_targets=[\"q_proj\", \"v_proj\", \"down_proj\"]",
                "--train.lr=0.05", f"--data.prepared_dir={tmp_path / 'p2'}")
    assert r.returncode == 0, r.stderr
    assert "trainable: LoRA rank 4" in r.stderr
    ckpt = tmp_path / "lora" / "checkpoints"
    latest = ckpt / (ckpt / "latest").read_text().strip()
    assert (latest / "adapter_model.safetensors").is_file() and not (latest / "model.safetensors").exists()

    r = run_cli("export", str(tmp_path / "lora"), str(tmp_path / "lora-hf"))
    assert r.returncode == 0, r.stderr
    r = run_cli("export", str(tmp_path / "lora"), str(tmp_path / "merged-hf"), "--merge-lora")
    assert r.returncode == 0, r.stderr

    ids = torch.randint(1, 300, (2, 24), generator=torch.Generator().manual_seed(3))
    merged_ours = load(tmp_path / "lora", device="cpu").model
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lora-hf").eval()
    with torch.no_grad():
        base_logits = base(ids).logits
    with_adapter = peft.PeftModel.from_pretrained(base, tmp_path / "lora-hf" / "adapter").eval()
    merged_hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged-hf").eval()
    with torch.no_grad():
        a, b, c = merged_ours(ids), with_adapter(input_ids=ids).logits, merged_hf(ids).logits
    assert (a - base_logits).abs().max().item() > 1e-3  # the adapter changed something
    assert (a - b).abs().max().item() < 1e-4
    assert (a - c).abs().max().item() < 1e-4
    # and the exported adapter (transformers' names, no tokenizer of its own) loads back in aigc
    with torch.no_grad():
        d = load(tmp_path / "lora-hf" / "adapter", device="cpu").model(ids)
    assert (a - d).abs().max().item() < 1e-4


def test_train_config_checks_every_key():
    from aigc.config import TrainConfig

    for key, value in (("dtype", "fp8"), ("beta1", 1.0), ("time_limit", "cpus"), ("lora_rank", -1),
                       ("seq_len", -5), ("warmup_steps", -1)):
        with pytest.raises(AigcError, match=f"train.{key}"):
            TrainConfig(**{key: value}).validate()
    with pytest.raises(AigcError, match="needs train.init_from"):
        TrainConfig(lora_rank=4).validate()
    with pytest.raises(AigcError, match="lora_targets"):
        TrainConfig(lora_rank=4, init_from="x", lora_targets=["qkv"]).validate()


# ---------------------------------------------------------------- bad input


def test_bad_hf_folders(tokenizer, tmp_path):
    make_hf_folder("llama", tmp_path / "ok", tokenizer)

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tmp_path / "ok", no_weights)
    (no_weights / "model.safetensors").unlink()
    (no_weights / "pytorch_model.bin").write_bytes(b"not read")
    r = run_cli("sample", str(no_weights), "--max-new-tokens", "2")
    assert r.returncode == 2
    assert "no weights" in r.stderr and "pytorch_model.bin" in r.stderr and "Traceback" not in r.stderr

    wrong = tmp_path / "wrong-shape"
    shutil.copytree(tmp_path / "ok", wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AigcError, match=r"mlp\.gate_proj\.weight.*shape"):
        load_model_folder(wrong)

    other = tmp_path / "mistral"
    shutil.copytree(tmp_path / "ok", other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (other / "config.json").write_text(json.dumps(cfg))
    r = run_cli("sample", str(other))
    assert r.returncode == 2
    assert "'mistral' is not supported" in r.stderr and "gpt2, llama, qwen2" in r.stderr

    r = run_cli("sample", "Qwen/Qwen2-0.5B")
    assert r.returncode == 2 and "hub name" in r.stderr and "never downloads" in r.stderr


def test_adapter_for_another_base(tmp_path):
    """An adapter whose recorded base is a different model is refused, naming the mismatch."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXT * 30), encoding="utf-8")

    def base(name, d_model):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(
            f'[data]\nsource = "{corpus}"\nprepared_dir = "{tmp_path / "p"}"\n'
            f'[model]\nfamily = "gpt"\nblock_size = 16\nn_layer = 1\nn_head = 2\nd_model = {d_model}\n'
            f'[train]\nout_dir = "{tmp_path / name}"\nbatch_size = 2\nmax_steps = 2\nwarmup_steps = 1\n'
            f'eval_interval = 2\neval_batches = 1\nthreads = {CORES}\n', encoding="utf-8")
        assert run_cli("train", str(cfg), "--quiet").returncode == 0
        return cfg

    cfg = base("a", 16)
    base("b", 24)
    r = run_cli("train", str(cfg), "--quiet", "--init-from", str(tmp_path / "a"), "--lora-rank", "2",
                f"--train.out_dir={tmp_path / 'lora'}", f"--data.prepared_dir={tmp_path / 'p2'}")
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "lora" / "checkpoints"
    latest = ckpt / (ckpt / "latest").read_text().strip()
    adapter_cfg = json.loads((latest / "adapter_config.json").read_text())
    adapter_cfg["base_model_name_or_path"] = str(tmp_path / "b")
    (latest / "adapter_config.json").write_text(json.dumps(adapter_cfg))
    r = run_cli("sample", str(tmp_path / "lora"), "--max-new-tokens", "2")
    assert r.returncode == 2  # the recorded fingerprint of the base's weights catches it first
    assert "has changed since the adapter was made" in r.stderr and "Traceback" not in r.stderr
    del adapter_cfg["aigc_base_sha256"]  # an adapter without one (peft's): the shapes catch it
    (latest / "adapter_config.json").write_text(json.dumps(adapter_cfg))
    r = run_cli("sample", str(tmp_path / "lora"), "--max-new-tokens", "2")
    assert r.returncode == 2
    assert "made for another base model" in r.stderr and "Traceback" not in r.stderr


def test_full_finetune_from_transformers_folder_reports_missing_characters(tmp_path):
    """`aigc train --init-from HF_FOLDER`: the base's tokenizer is kept, a corpus character its
    vocabulary lacks is reported (and its documents skipped), and the loss goes down."""
    from aigc.data.tokenizer import train_char_tokenizer

    tok = train_char_tokenizer(TEXT)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=56,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=32, eos_token_id=0, bos_token_id=None)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "base")
    tok.tk.save(str(tmp_path / "base" / "tokenizer.json"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXT * 30 + ["the fox ate a ŋ cake", "a zebra!"]), encoding="utf-8")
    config = tmp_path / "ft.toml"
    config.write_text(
        f'[data]\nsource = "{corpus}"\n[model]\nfamily = "gpt"\n'
        f'[train]\nout_dir = "{tmp_path / "ft"}"\nbatch_size = 4\nmax_steps = 30\nwarmup_steps = 2\nlr = 0.01\n'
        f'eval_interval = 30\neval_batches = 2\nthreads = {CORES}\n', encoding="utf-8")
    r = run_cli("train", str(config), "--init-from", str(tmp_path / "base"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "lacks 2 characters" in r.stderr and "'ŋ' (U+014B)" in r.stderr and "'!'" in r.stderr
    assert "skipped 2 of" in r.stderr
    rows = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.5
    meta = json.loads((tmp_path / "ft" / "run.json").read_text())["data_meta"]
    assert meta["vocabulary_report"]["missing_characters"] == {"ŋ": 1, "!": 1}
    # the fine-tuned model carries the base's tokenizer
    assert load(tmp_path / "ft", device="cpu").tokenizer.tk.get_vocab() == tok.tk.get_vocab()


def test_llama_vocabulary_opens_documents_with_bos(tmp_path):
    """A Llama-style tokenizer (``<s>``/``</s>``, add_bos_token) starts prompts and training documents
    with ``<s>`` and ends documents with ``</s>``, as transformers' tokenizer does."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from aigc.config import DataConfig
    from aigc.data.shards import TokenData, prepare
    from aigc.data.tokenizer import Tokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate("abcdefgh ")}}
    tk = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.FixedLength(length=1)
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(["<unk>", "<s>", "</s>"])
    folder = tmp_path / "tok"
    folder.mkdir()
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    tok = Tokenizer.load(folder)
    assert (tok.bos_id, tok.eot_id) == (1, 2)
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc\ndef\nbad\nfeed\n", encoding="utf-8")
    out = prepare(DataConfig(source=str(corpus), tokenizer=str(folder), val_fraction=0.25), tmp_path / "p",
                  progress=False)
    data = TokenData(out)
    stream = data.splits["train"].tolist() + data.splits["val"].tolist()
    assert stream.count(1) == 4 and stream.count(2) == 6  # <s> before each document, </s> after (+ each split's lead)
    train = data.splits["train"].tolist()
    assert train[0] == 2 and train[1] == 1 and all(train[i + 1] == 1 for i, t in enumerate(train[:-1]) if t == 2 and i)
