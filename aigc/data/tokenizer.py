"""Tokenizers: character-level and byte-level BPE, both `tokenizers` objects saved as tokenizer.json.

- ``char``: one token per Unicode character (a WordLevel model over single
  characters, split by a FixedLength(1) pre-tokenizer, joined back by a Fuse
  decoder). The vocabulary is every character of the corpus; a character outside
  it is an error, not a silent <unk>.
- ``bpe``: byte-level BPE (Radford et al. 2019; Sennrich et al. 2016): every
  string encodes, and decode(encode(s)) == s exactly (no prefix space is added).

Both reserve id 0 for the document-boundary token ``<|endoftext|>``, which
separates documents in the token stream and ends generation. Hugging Face tools
read the saved tokenizer.json directly.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from aigc.atomic import read_json, write_json, write_text
from aigc.errors import AigcError, check_unicode
from aigc.folders import tokenizer_file

DOC_TOKEN = "<|endoftext|>"


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` that knows its kind and boundary token.

    ``encode`` returns a list of int ids; ``decode`` drops the boundary token.
    """

    def __init__(self, tk: HFTokenizer, eot_token: str | None = None, config: dict | None = None):
        self.tk = tk
        self.config = dict(config or {})  # tokenizer_config.json (chat template, eos/bos tokens), kept as read
        model_type = type(tk.model).__name__
        self.kind = "char" if model_type == "WordLevel" else "bpe"
        self.eot_token = eot_token or DOC_TOKEN
        eot = tk.token_to_id(self.eot_token)
        if eot is None:
            raise AigcError(f"tokenizer has no document-boundary token {self.eot_token!r}")
        self.eot_id: int = eot
        # the token a document starts with: <|endoftext|> itself for aigc's, GPT-2's and Qwen2's
        # vocabularies; a Hugging Face folder's bos_token when its tokenizer adds one (Llama's <s>)
        bos = self.config.get("bos_token")
        bos = bos.get("content") if isinstance(bos, dict) else bos
        bos_id = tk.token_to_id(bos) if isinstance(bos, str) and self.config.get("add_bos_token", True) else None
        self.bos_id: int = bos_id if bos_id is not None else eot
        self._vocab = tk.get_vocab() if self.kind == "char" else None
        # special tokens (<|endoftext|>, ChatML's <|im_start|>, ...) encode whole, whatever their characters
        self.specials = sorted((t.content for t in tk.get_added_tokens_decoder().values() if t.special),
                               key=len, reverse=True)

    def _without_specials(self, text: str) -> str:
        for token in self.specials:
            text = text.replace(token, "")
        return text

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def check_text(self, text: str, what: str = "prompt") -> None:
        """Raise :class:`AigcError` if ``text`` is not valid Unicode (a lone surrogate), or has a
        character a char tokenizer cannot encode. Every text reaches the tokenizer through here."""
        check_unicode(text, what)
        if self.kind != "char":
            return
        for ch in self._without_specials(text):
            if ch not in self._vocab:
                raise AigcError(
                    f"{what} character {ch!r} (U+{ord(ch):04X}) is not in the tokenizer's vocabulary "
                    f"of {self.vocab_size} characters")

    def encode(self, text: str, what: str = "prompt") -> list[int]:
        """Token ids of ``text``.

        Raises:
            AigcError: a character the character-level vocabulary lacks, named with its code point.
        """
        self.check_text(text, what)
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many documents at once (parallel in Rust); texts must be encodable."""
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``, without boundary tokens."""
        return self.tk.decode(list(ids), skip_special_tokens=True)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically, and beside it the tokenizer_config.json this tokenizer
        was loaded with (a base model's chat template and special tokens travel with it)."""
        write_text(path, self.tk.to_str(pretty=True))
        if self.config:
            write_json(Path(path).parent / "tokenizer_config.json", self.config)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Read a tokenizer.json (or the one of a model folder).

        The document-boundary token is ``<|endoftext|>`` when the vocabulary has it (aigc's
        own tokenizers, GPT-2, Qwen2), else the ``eos_token`` of a ``tokenizer_config.json``
        beside the file (Hugging Face folders, e.g. ``</s>`` for Llama).

        Raises:
            AigcError: missing or unreadable file, or no boundary token.
        """
        path = tokenizer_file(path)
        try:
            tk = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception
            raise AigcError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
        eot, config = None, {}
        config_path = path.parent / "tokenizer_config.json"
        if config_path.is_file():
            config = read_json(config_path, dict)
        if tk.token_to_id(DOC_TOKEN) is None:
            eot = special_token(path.parent, "eos_token")
            if eot is None:
                raise AigcError(f"{path}: no {DOC_TOKEN!r} token and no eos_token in a tokenizer_config.json "
                                "beside it; cannot tell where documents end")
        return cls(tk, eot, config)

    def fingerprint(self, with_config: bool = False) -> str:
        """A short hash of the tokenizer's serialised form: equal fingerprints, equal token ids.
        ``with_config`` also hashes what tokenizer_config.json says about documents and chat
        (chat template, eos/bos tokens, add_bos_token), which changes how a corpus is encoded."""
        text = self.tk.to_str()
        if with_config:
            keys = ("chat_template", "eos_token", "bos_token", "add_bos_token")
            text += json.dumps({k: self.config.get(k) for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]

    def missing_characters(self, docs: Iterable[str]) -> dict[str, int]:
        """Characters of ``docs`` a character-level vocabulary lacks, with their counts
        (most frequent first); always empty for byte-level BPE, which encodes every string."""
        if self.kind != "char":
            return {}
        counts = Counter()
        for doc in docs:
            counts.update(ch for ch in self._without_specials(doc) if ch not in self._vocab)
        return dict(counts.most_common())


def special_token(folder: str | Path, name: str) -> str | None:
    """The ``name`` special token (``eos_token``, ``bos_token``) in ``folder/tokenizer_config.json``,
    as Hugging Face writes it (a string or ``{"content": ...}``); None when absent."""
    path = Path(folder) / "tokenizer_config.json"
    try:
        value = read_json(path, dict).get(name)
    except AigcError:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def train_char_tokenizer(docs: Iterable[str]) -> Tokenizer:
    """A character-level tokenizer whose vocabulary is every character in ``docs`` (sorted by code point)."""
    chars = set()
    for doc in docs:
        chars.update(doc)
    vocab = {DOC_TOKEN: 0}
    for ch in sorted(chars):
        vocab[ch] = len(vocab)
    tk = HFTokenizer(models.WordLevel(vocab, unk_token=DOC_TOKEN))
    tk.pre_tokenizer = pre_tokenizers.FixedLength(length=1)
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([DOC_TOKEN])
    return Tokenizer(tk)


def train_bpe_tokenizer(docs: Iterable[str], vocab_size: int, show_progress: bool = True,
                        extra_special: list[str] = ()) -> Tokenizer:
    """A byte-level BPE tokenizer with ``vocab_size`` tokens (special tokens included) learned on ``docs``.

    ``extra_special``: more special tokens after the boundary token (ids 1, 2, ...), e.g. the
    fill-in-the-middle sentinels.
    """
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[DOC_TOKEN, *extra_special], show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(docs, trainer=trainer)
    return Tokenizer(tk)
