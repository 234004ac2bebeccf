"""Structured output: JSON that parses and matches a schema, by grammar-constrained decoding.

A JSON schema (or any JSON object, for ``json_object``) is compiled by llguidance (Microsoft's
grammar engine, PyPI ``llguidance``, MIT) into a grammar; one matcher per sample then gives, before
every token, the set of tokens that keep the text a prefix of some valid document, and the
engine sets every other logit to -inf (see the hooks in :mod:`aigc.generate.engine`). When the
document is complete, only the request's stop tokens remain allowed.

Why llguidance: it computes a token mask from the tokens' bytes alone, so it serves our
character vocabularies as well as byte-level BPE (given each token's bytes); it is one wheel with
no dependencies; its masks take tens of microseconds. xgrammar needs triton (about 1 GB) pulled
in beside it, and outlines many more packages (``../shared/DATA.md``).

JSON is compact here (no whitespace between tokens): small models otherwise wander into long runs
of spaces and newlines that the grammar allows.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from aigc.errors import AigcError

_OPTIONS = {"whitespace_flexible": False}


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:300] if (text or "").strip() else "unknown reason"


class GrammarError(AigcError):
    """A schema the grammar compiler refuses (the message says why) or a model it cannot serve."""


def _lib():
    try:
        import llguidance
    except ImportError as e:  # a core dependency; only a broken install lacks it
        raise AigcError("structured output needs the llguidance package: pip install llguidance") from e
    return llguidance


def json_grammar(schema: dict | None) -> str:
    """The grammar of JSON documents matching ``schema`` (a JSON schema as a dict); None: any JSON object.

    Raises:
        GrammarError: ``schema`` is not a JSON object, or the compiler refuses it (its reason quoted).
    """
    lib = _lib()
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise GrammarError(f"json_schema: expected a JSON object, got {type(schema).__name__}")
    try:
        grammar = lib.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=_OPTIONS)
    except (ValueError, TypeError) as e:
        raise GrammarError(f"json_schema: cannot compile: {_first_line(str(e))}") from None
    problem = lib.LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise GrammarError(f"json_schema: cannot compile: {_first_line(problem)}")
    return grammar


class GrammarVocabulary:
    """A model's tokens as llguidance sees them: the bytes of each id, the special and unused ids
    (never allowed), and the end-of-document token (offered once a document is complete).

    Args:
        token_bytes: the bytes of every model token id (``TextModel.token_bytes``; empty for
            special and unused ids).
        encode: text -> token ids (used by llguidance to tokenize fixed strings).
        eot: the end-of-document token id.
    """

    def __init__(self, token_bytes: list[bytes], encode, eot: int):
        lib = _lib()
        special = [i for i, b in enumerate(token_bytes) if not b]

        class Wrapper:  # the duck type llguidance.TokenizerWrapper reads
            eos_token_id = eot
            bos_token_id = None
            tokens = [b if b else b"\xff<|special_%d|>" % i for i, b in enumerate(token_bytes)]
            special_token_ids = special

            def __call__(self, s):
                return encode(s.decode("utf-8", errors="ignore") if isinstance(s, bytes) else s)

        self.size, self.eot = len(token_bytes), eot
        self.tokenizer = lib.LLTokenizer(lib.TokenizerWrapper(Wrapper()), eos_token=eot)

    def compile(self, grammar: str):
        """A matcher at the start of ``grammar`` (from :func:`json_grammar`), to copy per sample; the
        slow part (up to about a second for a large schema), so callers do it once per schema.

        Raises:
            GrammarError: the grammar does not build for this vocabulary (the reason quoted).
        """
        m = _lib().LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise GrammarError(f"json_schema: cannot compile: {_first_line(m.get_error())}")
        GrammarState(self, m, 1, ()).allowed()  # the first mask: a schema that cannot start here fails now, not mid-batch
        return m


class GrammarState:
    """One matcher per sample of a request: the tokens each may take next, advanced token by token.

    Args:
        vocab: the model's :class:`GrammarVocabulary`.
        start: a matcher from :meth:`GrammarVocabulary.compile`, copied for each sample.
        n: samples.
        stop_ids: the tokens that end a sample in this request (allowed once its document is complete).
        token_text: id -> text, to name the document so far in an error.
    """

    def __init__(self, vocab: GrammarVocabulary, start, n: int, stop_ids, token_text=None):
        self.vocab, self.token_text, self.stop_ids = vocab, token_text, set(stop_ids) | {vocab.eot}
        self.matchers = [start.deep_copy() for _ in range(n)]
        self.end = np.zeros(vocab.size, dtype=bool)  # (V,): the tokens that end a sample
        self.end[[t for t in self.stop_ids if t < vocab.size]] = True
        self.done = [False] * n  # sample ended (its stop token taken): no more constraints
        self.text = [[] for _ in range(n)]

    def allowed(self) -> torch.Tensor:
        """Bool ``(n, V)``: the tokens each sample may take next (every token for an ended sample).

        Raises:
            GrammarError: no token of the vocabulary can continue a sample's document.
        """
        rows = []
        for i, m in enumerate(self.matchers):
            if self.done[i]:
                rows.append(np.ones(self.vocab.size, dtype=bool))
                continue
            if m.is_error():  # a limit of the grammar engine, or a token it refused
                raise GrammarError(f"the JSON grammar failed: {_first_line(m.get_error())}")
            if m.is_stopped():  # the document is complete: only an end token may follow
                rows.append(self.end.copy())
                continue
            bits = np.unpackbits(np.frombuffer(m.compute_bitmask(), dtype=np.uint8), bitorder="little")
            row = bits[:self.vocab.size].astype(bool)
            row[self.vocab.eot] = False  # llguidance's own end bit; the request's end tokens below
            accepting = m.is_accepting()
            if not row.any() and not accepting:  # nothing can go on (llguidance would offer the end)
                so_far = "".join(self.token_text(t) for t in self.text[i]) if self.token_text else ""
                raise GrammarError(f"no token of this model's vocabulary can continue the JSON after "
                                   f"{so_far[-40:]!r} (the characters it needs are missing)")
            rows.append(row | self.end if accepting else row)
        return torch.from_numpy(np.stack(rows))

    def advance(self, nxt: list[int]) -> None:
        """Feed each sample's new token to its matcher."""
        for i, (m, t) in enumerate(zip(self.matchers, nxt)):
            if self.done[i]:
                continue
            if t in self.stop_ids:
                self.done[i] = True
                continue
            m.consume_token(t)
            self.text[i].append(t)
