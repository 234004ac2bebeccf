"""A statistical watermark in generated text (Kirchenbauer et al. 2023, "A Watermark for Large
Language Models", ICML): before each token, a secret key and the ``h`` tokens before it pick a
"green list" holding a share ``gamma`` of the vocabulary, and ``delta`` is added to the green
tokens' logits. Text written that way holds far more green tokens than the ``gamma`` share chance
gives, which :mod:`aigc.evaluate.watermark` measures as a z-score; text written without the key
holds about ``gamma``.

Two schemes, as in the paper's code:

- ``lefthash``: the green list depends on the key and the previous ``h`` tokens only;
- ``selfhash``: it also depends on the token being chosen (the seed is the minimum of the keyed
  hashes of the previous ``h - 1`` tokens and the candidate), which makes the watermark harder to
  scrub token by token; at generation only the ``SELFHASH_TOP`` most likely candidates are checked
  (the rest are too unlikely to be drawn).

The key file (JSON) holds the secret and every setting, and the tokenizer and vocabulary it was
made for, so generating and detecting cannot silently disagree.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from aigc.atomic import read_json, write_private
from aigc.errors import AigcError
from aigc.generate.treering import TreeRingKey

SCHEMES = ("lefthash", "selfhash")
SELFHASH_TOP = 40


@dataclass(frozen=True)
class WatermarkKey:
    """A watermark's secret and settings.

    Attributes:
        key: the secret, 64 hex digits (256 bits).
        scheme: ``lefthash`` or ``selfhash``.
        gamma: the green share of the vocabulary, in (0, 1).
        delta: the logit added to green tokens (>= 0; 0 marks nothing).
        context: ``h``, the tokens before a position that seed its green list (1 to 8).
        vocab_size: the tokenizer's vocabulary size the lists split (an embedding's extra rows are never green).
        tokenizer: the tokenizer's fingerprint (:meth:`aigc.data.tokenizer.Tokenizer.fingerprint`).
    """

    key: str
    scheme: str = "lefthash"
    gamma: float = 0.25
    delta: float = 2.0
    context: int = 1
    vocab_size: int = 0
    tokenizer: str = ""

    def validate(self, where: str = "watermark key") -> None:
        """Raises AigcError naming the first bad field."""
        if not isinstance(self.key, str) or len(self.key) != 64 or any(c not in "0123456789abcdef" for c in self.key):
            raise AigcError(f"{where}: key: expected 64 lowercase hex digits")
        if self.scheme not in SCHEMES:
            raise AigcError(f"{where}: scheme = {self.scheme!r}: expected one of {', '.join(SCHEMES)}")
        if isinstance(self.gamma, bool) or not (isinstance(self.gamma, (int, float)) and 0 < self.gamma < 1):
            raise AigcError(f"{where}: gamma = {self.gamma!r}: expected a number in (0, 1)")
        if isinstance(self.delta, bool) or not (isinstance(self.delta, (int, float)) and 0 <= self.delta <= 20):
            raise AigcError(f"{where}: delta = {self.delta!r}: expected a number from 0 to 20")
        if isinstance(self.context, bool) or not (isinstance(self.context, int) and 1 <= self.context <= 8):
            raise AigcError(f"{where}: context = {self.context!r}: expected an integer from 1 to 8")
        if isinstance(self.vocab_size, bool) or not (isinstance(self.vocab_size, int) and self.vocab_size >= 2):
            raise AigcError(f"{where}: vocab_size = {self.vocab_size!r}: expected the tokenizer's vocabulary size")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise AigcError(f"{where}: tokenizer: expected the tokenizer's fingerprint")

    def check_tokenizer(self, tokenizer) -> None:
        """Raises AigcError unless ``tokenizer`` is the one this key was made for."""
        if tokenizer.fingerprint() != self.tokenizer or tokenizer.vocab_size != self.vocab_size:
            raise AigcError(f"the watermark key was made for another tokenizer (fingerprint {self.tokenizer}, "
                            f"{self.vocab_size} tokens; this model's: {tokenizer.fingerprint()}, "
                            f"{tokenizer.vocab_size} tokens): generate and detect with the key of this model")


def new_key(tokenizer, scheme: str = "lefthash", gamma: float = 0.25, delta: float = 2.0,
            context: int | None = None) -> WatermarkKey:
    """A fresh random key for ``tokenizer`` (``context`` default: 1 for lefthash, 4 for selfhash,
    the paper's settings)."""
    k = WatermarkKey(secrets.token_hex(32), scheme, gamma, delta, context or (4 if scheme == "selfhash" else 1),
                     tokenizer.vocab_size, tokenizer.fingerprint())
    k.validate()
    return k


def save_key(key: "WatermarkKey | TreeRingKey", path: str | Path) -> None:
    """Write the key file (JSON) atomically, readable by its owner only, never over an existing file.

    Raises:
        AigcError: ``path`` exists or cannot be written.
    """
    write_private(path, (json.dumps(asdict(key), indent=2) + "\n").encode("utf-8"))


def load_key(path: str | Path):
    """Read and check a key file: a :class:`WatermarkKey` (text) or, with ``scheme = "treering"``, a
    :class:`aigc.generate.treering.TreeRingKey` (diffusion images).

    Raises:
        AigcError: not JSON, an unknown or missing field, or a bad value (named with the file).
    """
    raw = read_json(path, dict)
    kind = TreeRingKey if raw.get("scheme") == "treering" else WatermarkKey
    fields = set(kind.__dataclass_fields__)
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise AigcError(f"{path}: unknown field {unknown[0]!r} (a {'Tree-Ring' if kind is TreeRingKey else 'text'} "
                        f"watermark key has {', '.join(sorted(fields))})")
    missing = sorted(fields - set(raw))
    if missing:
        raise AigcError(f"{path}: missing field {missing[0]!r}")
    key = kind(**raw)
    key.validate(str(path))
    return key


def _hash(key: WatermarkKey, tokens) -> int:
    """A 63-bit keyed hash of a tuple of token ids."""
    h = hashlib.sha256(bytes.fromhex(key.key) + b"".join(int(t).to_bytes(4, "little") for t in tokens))
    return int.from_bytes(h.digest()[:8], "little") >> 1


def green_list(key: WatermarkKey, seed: int) -> torch.Tensor:
    """Bool ``(vocab_size,)``: the green tokens of ``seed`` (a random ``gamma`` share of the vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(key.vocab_size, generator=g)
    mask = torch.zeros(key.vocab_size, dtype=torch.bool)
    mask[perm[:int(key.gamma * key.vocab_size)]] = True
    return mask


def seed_of(key: WatermarkKey, before: list[int], token: int | None = None) -> int:
    """The green-list seed at a position: lefthash from the ``h`` tokens ``before`` it; selfhash the
    minimum of the keyed hashes of the last ``h - 1`` tokens before it and the ``token`` itself."""
    if key.scheme == "lefthash":
        return _hash(key, before[-key.context:])
    earlier = before[-(key.context - 1):] if key.context > 1 else []
    return min(_hash(key, (t,)) for t in [*earlier, token])


def is_green(key: WatermarkKey, before: list[int], token: int) -> bool:
    """Is ``token`` green after ``before`` (token ids; the document-start token counts as context)?"""
    if token >= key.vocab_size:
        return False
    return bool(green_list(key, seed_of(key, before, token))[token])


class WatermarkState:
    """The watermark of one request's ``n`` samples: the green bias before each token.

    Args:
        key: the watermark key.
        prompt: the prompt's token ids (context for the first tokens).
        n: samples.
        vocab: the model's vocabulary (embedding rows); rows beyond ``key.vocab_size`` never green.
    """

    def __init__(self, key: WatermarkKey, prompt: list[int], n: int, vocab: int):
        self.key, self.vocab = key, vocab
        self.history = [list(prompt) for _ in range(n)]

    def bias(self, logits: torch.Tensor) -> torch.Tensor:
        """Float ``(n, V)``: ``delta`` on each sample's green tokens (selfhash: among its
        :data:`SELFHASH_TOP` most likely candidates in ``logits (n, V)``), 0 elsewhere."""
        out = torch.zeros(len(self.history), self.vocab)
        for i, before in enumerate(self.history):
            if self.key.scheme == "lefthash":
                out[i, :self.key.vocab_size] = green_list(self.key, seed_of(self.key, before)).float()
            else:
                for t in torch.topk(logits[i], min(SELFHASH_TOP, logits.size(-1))).indices.tolist():
                    out[i, t] = float(is_green(self.key, before, t))
        return out * self.key.delta

    def advance(self, nxt: list[int]) -> None:
        for h, t in zip(self.history, nxt):
            h.append(t)
            del h[:-max(self.key.context, 8)]
