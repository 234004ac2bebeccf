"""The `lstm` family: the classic LSTM language model.

Embedding -> multi-layer LSTM (Hochreiter & Schmidhuber 1997) -> linear over the
vocabulary, trained like the Transformer to predict the next token at *every*
position of the sequence (Karpathy's char-rnn; Zaremba et al. 2014 for dropout
between layers). Its "cache" for the inference engine is the recurrent state
(h, c) after the tokens seen so far, so generation costs one step per token.

Shapes: B batch, T tokens, E = d_embed, H = d_hidden, L = n_layer, V = vocab_size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from aigc.errors import AigcError


@dataclass
class LSTMConfig:
    """Architecture of an :class:`LSTMLM`; saved as config.json in every model folder."""

    vocab_size: int = 256
    block_size: int = 256  # training sequence length (truncated backpropagation through time)
    n_layer: int = 2
    d_embed: int = 256
    d_hidden: int = 512
    dropout: float = 0.0
    tie_embeddings: bool = False  # needs d_embed == d_hidden (projects through the embedding)

    def validate(self) -> None:
        """Raise :class:`AigcError` naming the first ``model.*`` key that is out of range."""
        for name in ("vocab_size", "block_size", "n_layer", "d_embed", "d_hidden"):
            if getattr(self, name) < 1:
                raise AigcError(f"model.{name} = {getattr(self, name)}: expected a positive integer")
        if not 0 <= self.dropout < 1:
            raise AigcError(f"model.dropout = {self.dropout}: expected a number in [0, 1)")
        if self.tie_embeddings and self.d_embed != self.d_hidden:
            raise AigcError("model.tie_embeddings = true needs model.d_embed == model.d_hidden")


class LSTMState:
    """Recurrent state ``h, c: (L, B, H)`` after ``pos`` tokens; the LSTM's generation cache.

    With ``per_row=True`` (continuous batching) each row is its own sequence: a forward
    pass continues the first ``idx.size(0)`` rows; :meth:`write_rows` and :meth:`move_rows`
    fill and compact rows.
    """

    def __init__(self, config: LSTMConfig, batch_size: int, device, dtype, per_row: bool = False):
        shape = (config.n_layer, batch_size, config.d_hidden)
        self.h = torch.zeros(shape, device=device, dtype=dtype)
        self.c = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.per_row = per_row

    def write_rows(self, start: int, src: "LSTMState", count: int) -> None:
        """Rows [start, start+count) get ``src``'s state (its one row repeated when it has batch 1)."""
        self.h[:, start:start + count] = src.h
        self.c[:, start:start + count] = src.c

    def move_rows(self, src: int, dst: int, count: int) -> None:
        """Copy rows [src, src+count) to [dst, dst+count)."""
        self.h[:, dst:dst + count] = self.h[:, src:src + count].clone()
        self.c[:, dst:dst + count] = self.c[:, src:src + count].clone()

    def row_full(self, row: int) -> bool:
        return False  # no context limit

    def grow(self, batch_size: int) -> None:
        """Make room for ``batch_size`` rows, keeping the rows already there."""
        old = self.h.size(1)
        if batch_size > old:
            pad = (self.h.size(0), batch_size - old, self.h.size(2))
            self.h = torch.cat([self.h, self.h.new_zeros(pad)], dim=1)
            self.c = torch.cat([self.c, self.c.new_zeros(pad)], dim=1)


class LSTMLM(nn.Module):
    """LSTM language model: tokens ``(B, T) int64`` -> next-token logits ``(B, T, V) float``."""

    family = "lstm"

    def __init__(self, config: LSTMConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_embed)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.d_embed, config.d_hidden, num_layers=config.n_layer,
                            dropout=config.dropout if config.n_layer > 1 else 0.0, batch_first=True)
        self.lm_head = nn.Linear(config.d_hidden, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Embedding N(0, 0.02); LSTM weights U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's default) with
        the forget-gate bias set to 1 (Jozefowicz et al. 2015); output layer N(0, 0.02), zero bias."""
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        bound = self.config.d_hidden ** -0.5
        H = self.config.d_hidden
        for name, p in self.lstm.named_parameters():
            nn.init.uniform_(p, -bound, bound)
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    p.zero_()
                    p[H:2 * H] = 1.0  # gate order i, f, g, o: forget gate bias = 1
            elif name.startswith("bias_hh"):
                nn.init.zeros_(p)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)

    @property
    def context_length(self) -> int | None:
        return None  # a recurrent model has no context limit

    def new_cache(self, batch_size: int, max_len: int | None = None, per_row: bool = False) -> LSTMState:
        """A zero :class:`LSTMState` for ``batch_size`` sequences (``max_len`` is unused)."""
        p = self.tok_emb.weight
        return LSTMState(self.config, batch_size, p.device, p.dtype, per_row)

    def forward(self, idx: torch.Tensor, cache: LSTMState | None = None) -> torch.Tensor:
        """Logits ``(B, T, V)`` for tokens ``idx (B, T)``, continuing from ``cache`` if given."""
        x = self.drop(self.tok_emb(idx))  # (B, T, E)
        if cache is not None and cache.per_row:  # continue the first B rows
            B = idx.size(0)
            y, (h, c) = self.lstm(x, (cache.h[:, :B].contiguous(), cache.c[:, :B].contiguous()))
            cache.h[:, :B], cache.c[:, :B] = h, c
            return self.lm_head(self.drop(y))
        state = (cache.h, cache.c) if cache is not None else None
        y, (h, c) = self.lstm(x, state)  # y: (B, T, H)
        if cache is not None:
            cache.h, cache.c = h, c
            cache.pos += idx.size(1)
        return self.lm_head(self.drop(y))  # (B, T, V)
