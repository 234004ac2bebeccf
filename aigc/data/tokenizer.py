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

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from aigc.atomic import write_text
from aigc.errors import AigcError

DOC_TOKEN = "<|endoftext|>"


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` that knows its kind and boundary token.

    ``encode`` returns a list of int ids; ``decode`` drops the boundary token.
    """

    def __init__(self, tk: HFTokenizer):
        self.tk = tk
        model_type = type(tk.model).__name__
        self.kind = "char" if model_type == "WordLevel" else "bpe"
        eot = tk.token_to_id(DOC_TOKEN)
        if eot is None:
            raise AigcError(f"tokenizer has no document-boundary token {DOC_TOKEN!r}")
        self.eot_id: int = eot
        self._vocab = tk.get_vocab() if self.kind == "char" else None

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def check_text(self, text: str, what: str = "prompt") -> None:
        """Raise :class:`AigcError` if ``text`` has a character a char tokenizer cannot encode."""
        if self.kind != "char":
            return
        for ch in text.replace(DOC_TOKEN, ""):
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
        """Write tokenizer.json atomically."""
        write_text(path, self.tk.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Read a tokenizer.json.

        Raises:
            AigcError: missing or unreadable file.
        """
        path = Path(path)
        if not path.is_file():
            raise AigcError(f"{path}: tokenizer file not found")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # the Rust side raises plain Exception
            raise AigcError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None


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
