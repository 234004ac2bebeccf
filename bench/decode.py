"""Decode speed side by side: aigc (float32 / bfloat16 / int8) vs transformers `generate` vs llama.cpp.

Greedy decoding of ``--new`` tokens after a ``--prompt``-token prompt, at batch 1 and 8, on
random Llama-layout models S and M (built here, seed 0, with a byte-level BPE vocabulary
trained on the shipped Tang poems) and on tang-base. llama.cpp runs our GGUF export (f32, f16,
q8_0) through llama-cpp-python at batch 1 (its Python binding decodes one sequence); transformers
runs our transformers export. aigc runs eager and with its compiled decode step
(``--compile``; the warm-up run pays the compile). Every engine is timed in this one process, the engines alternating
within each repeat; tokens/s = new tokens x batch / wall time of prefill + decode; median and
range of ``--repeats``. The first tokens of every float32 engine are compared.

Usage: python bench/decode.py [--models S M tang-base] [--repeats 5] [--threads 2] [--device cpu] [--out FILE.json]
Needs the test extras (transformers) and llama-cpp-python (`make llamacpp`); an engine whose
package is missing is left out and said so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import aigc  # noqa: E402
from aigc.config import SampleConfig  # noqa: E402
from aigc.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from aigc.formats.gguf_file import export_gguf  # noqa: E402
from aigc.formats.hf import export_hf  # noqa: E402
from aigc.formats.model_folder import save_model_folder  # noqa: E402
from aigc.generate.engine import Engine  # noqa: E402
from aigc.models.transformer import GPT, GPTConfig  # noqa: E402
from conftest import tang_documents  # noqa: E402

SHAPES = {  # Llama layout: RMSNorm, rotary, SwiGLU, grouped-query attention
    "S": dict(vocab=4096, d_model=192, n_layer=4, n_head=6, n_kv_head=2, d_ff=512, tie=True),
    "M": dict(vocab=8192, d_model=384, n_layer=6, n_head=6, n_kv_head=2, d_ff=1024, tie=False),
}


def build(name: str, root: Path) -> Path:
    """A model folder: tang-base as shipped, or a random S/M model with its own BPE vocabulary."""
    if name == "tang-base":
        return aigc.load("tang-base").folder
    s = SHAPES[name]
    tok = train_bpe_tokenizer(tang_documents(20000), s["vocab"], show_progress=False)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=s["n_layer"], n_head=s["n_head"],
                          n_kv_head=s["n_kv_head"], d_model=s["d_model"], d_ff=s["d_ff"], bias=False,
                          norm="rmsnorm", positions="rope", mlp="swiglu", tie_embeddings=s["tie"]))
    save_model_folder(root / name, model, tok)
    return root / name


def aigc_runner(folder: Path, dtype: str, batch: int, prompt: list[int], new: int, device: str, compiled: bool):
    tm = aigc.load(folder, device=device, dtype=dtype)
    settings = SampleConfig(temperature=0.0, max_new_tokens=new, repetition_penalty=1.0)
    engine = Engine(tm.model, compiled)  # compiled: the warm-up call below pays the compile

    def run():
        rows = [t for t in engine.generate(prompt, batch, settings, seed=0)]
        return [int(r[0]) for r in rows]
    return run


def hf_runner(folder: Path, batch: int, prompt: list[int], new: int, root: Path, device: str):
    import transformers
    out = root / f"hf-{folder.name}"
    if not out.exists():
        tm = aigc.load(folder, device="cpu")
        export_hf(tm.model, tm.tokenizer, out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval().to(device)
    ids = torch.tensor([prompt] * batch, device=device)

    def run():
        with torch.inference_mode():
            y = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, eos_token_id=None, pad_token_id=0)
        return y[0, len(prompt):].tolist()
    return run


def llama_runner(folder: Path, type_: str, prompt: list[int], new: int, root: Path, threads: int):
    import llama_cpp
    path = root / f"{folder.name}-{type_}.gguf"
    if not path.exists():
        tm = aigc.load(folder, device="cpu")
        export_gguf(tm.model, tm.tokenizer, path, type_)
    llm = llama_cpp.Llama(str(path), n_ctx=len(prompt) + new + 8, n_threads=threads, n_batch=64, verbose=False)

    def run():
        out = []
        for t in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            out.append(int(t))
            if len(out) == new:
                return out
    return run


def runners(folder: Path, batch: int, prompt: list[int], new: int, root: Path, args) -> dict:
    dtypes = ("float32", "bfloat16", "int8") if args.device == "cpu" else ("float32", "bfloat16", "float16")
    out = {f"aigc {d}{' compiled' * c}": aigc_runner(folder, d, batch, prompt, new, args.device, c)
           for c in (False, True) for d in dtypes}
    try:
        out["transformers float32"] = hf_runner(folder, batch, prompt, new, root, args.device)
    except ImportError:
        print("transformers is not installed: left out", file=sys.stderr)
    if batch == 1 and args.device == "cpu":  # this llama-cpp-python build runs on the CPU
        try:
            for t in ("f32", "f16", "q8_0"):
                out[f"llama.cpp {t}"] = llama_runner(folder, t, prompt, new, root, args.threads)
        except ImportError:
            print("llama-cpp-python is not installed (make llamacpp): left out", file=sys.stderr)
    return out


def measure(name: str, folder: Path, batch: int, args, root: Path) -> list[dict]:
    tm = aigc.load(folder, device="cpu")
    new = min(args.new, tm.model.context_length - args.prompt)
    prompt = [tm.tokenizer.bos_id] + [10 + (7 * i) % 200 for i in range(args.prompt - 1)]
    engines = runners(folder, batch, prompt, new, root, args)
    times = {k: [] for k in engines}
    tokens = {}
    for k, run in engines.items():  # warm-up, and the tokens each engine produces
        tokens[k] = run()
    for _ in range(args.repeats):
        for k, run in engines.items():  # alternating within each repeat
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
    ref = tokens["aigc float32"]
    rows = []
    for k, ts in times.items():
        rates = sorted(new * batch / t for t in ts)
        rows.append({"model": name, "params": sum(p.numel() for p in tm.model.parameters()), "batch": batch,
                     "new_tokens": new, "engine": k, "tokens_per_s": statistics.median(rates),
                     "min": rates[0], "max": rates[-1], "same_greedy_as_aigc_f32": tokens[k] == ref})
        print(f"{name:9} B={batch} {k:22} {rows[-1]['tokens_per_s']:8.0f} tok/s  ({rates[0]:.0f}-{rates[-1]:.0f})"
              f"  same greedy: {tokens[k] == ref}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["S", "M", "tang-base"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (aigc and transformers; llama.cpp on cpu only)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models:
            folder = build(name, root)
            for batch in args.batches:
                rows += measure(name, folder, batch, args, root)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
