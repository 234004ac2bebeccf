"""A compiled decode step for the GPT: one fixed-shape graph for every token of a generation.

Generate layer: knows torch.compile and the GPT's static KV cache; nothing of tokenizers,
strings or files.

Decoding one token at a time on a CPU is bound by the weight matrix-vector products. PyTorch's
eager ``F.linear`` at batch 1 reads the weights at about 13 GB/s on the 2-core test machine,
on one thread whatever the thread count, while the same machine streams 46 GB/s; inductor's
C++ GEMM template (``max_autotune`` with the ``CPP`` backend, weights frozen into the graph)
runs those products on every thread at several times the rate (bench/RESULTS.md). The step
feeds one token per row through a :class:`~aigc.models.transformer.KVCache` made with
``static=True``: attention spans all ``block_size`` positions under a length mask, so the shapes
never change and the graph compiles once per batch size (the first call pays the compile,
about a minute on 2 cores). Prefill stays eager (its length varies).

Freezing bakes the weights into the compiled graph: a model whose weights change after the
first call needs a new decoder.
"""

from __future__ import annotations

import warnings

import torch
import torch._inductor.config as inductor_config


class CompiledDecoder:
    """``decoder(idx (B, 1) int64, cache) -> logits (B, 1, V)`` through a compiled ``model``.

    Args:
        model: a ``gpt`` model in eval mode (``new_cache(..., static=True)``).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        # no guards on the module's attributes (about 0.25 ms a step on M): its weights are frozen into
        # the graph at the first call anyway, and an inference model does not change
        self.fn = torch.compile(model, dynamic=False,
                                options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
        cpu = next(model.parameters()).device.type == "cpu"
        # the inductor settings in force while a graph compiles (the first call of each batch size)
        self.options = dict(freezing=True, max_autotune=cpu, max_autotune_gemm_backends="CPP,ATEN" if cpu else
                            "ATEN,TRITON", autotune_num_choices_displayed=0,  # no autotuning tables on stderr
                            max_autotune_report_choices_stats=False)

    def cache_from(self, cache, rows: int):
        """A static cache holding the ``cache.pos`` prefilled positions of ``cache``'s ``rows`` rows."""
        static = self.model.new_cache(rows, self.model.context_length, static=True)
        static.write_rows(0, cache, rows)
        return static

    def __call__(self, idx: torch.Tensor, cache) -> torch.Tensor:
        with inductor_config.patch(**self.options), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # from freezing, not ours
            return self.fn(idx, cache=cache)
