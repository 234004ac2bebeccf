"""Text models loaded for use: strings in, strings out (:class:`TextModel`).

A request goes through three steps, the same from the CLI, the Python API and the server:

1. ``settings``: the model's defaults (generation_config.json) with what the caller set
   replaced: one :class:`~aigc.config.SampleConfig`, validated once;
2. ``encode``: the prompt (and a fill-in-the-middle suffix) as a :class:`Prompt`, with token
   healing for BPE prompts and either cropping to the context (CLI, API) or a refusal over a
   caller's token limit (the server);
3. ``steps``: tokens from the :class:`~aigc.generate.engine.Engine` (or a shared
   :class:`~aigc.generate.engine.BatchEngine`) turned into text, with stop strings, stop
   tokens and code stops applied.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from aigc.config import SampleConfig
from aigc.data.chat import ChatTemplate, load_chat_template
from aigc.data.fim import fim_token_ids, infill_prompt
from aigc.data.tokenizer import Tokenizer
from aigc.errors import AigcError
from aigc.formats.model_folder import companion_folder, read_sample_defaults
from aigc.generate.engine import BatchEngine, Engine
from aigc.generate.tokens import _byte_level_table, code_end  # noqa: F401 - code_end is part of this module's API
from aigc.generate.grammar import GrammarState, GrammarVocabulary, json_grammar
from aigc.generate.logprobs import RequestHook, TokenLogprob, score_prompt
from aigc.generate.watermark import WatermarkKey, WatermarkState


@dataclass
class Prompt:
    """A prompt encoded for the engine.

    Attributes:
        ids: token ids, the document-start token first.
        healed: token healing (Microsoft Guidance's name for it): the text cut from the end of
            the prompt; the first new token must start with it, and it is not part of the output.
        line_start: the prompt ended a line (or was empty), so a completion starting at column 0
            ends at once under code stops.
    """

    ids: list[int]
    healed: str = ""
    line_start: bool = False


class PromptTooLong(AigcError):
    """A prompt over the token limit a caller set (:meth:`TextModel.encode` with ``limit``).

    Attributes:
        what: the field it came from ("prompt", "messages", "suffix"); tokens: its length when
        counted (None when its characters alone exceed the limit); limit: the limit in tokens.
    """

    def __init__(self, what: str, tokens: int | None, limit: int):
        self.what, self.tokens, self.limit = what, tokens, limit
        size = f"{tokens} tokens" if tokens is not None else "too many characters"
        super().__init__(f"{what} is too long ({size}; at most {limit} tokens, start-of-document token included)")


@dataclass
class GenerationStep:
    """What one decoding step produced for each of the ``n`` samples of a request.

    Attributes:
        pieces: new text of each sample ("" when a sample produced nothing printable yet or has ended).
        finish: None while a sample runs, then "stop" (stop string or stop token) or "length".
        tokens: tokens generated so far by each sample (stop tokens not counted).
        logprobs: with ``settings.logprobs``, each sample's token of this step scored (None for a
            sample that has ended or took a stop token); else None.
    """

    pieces: list[str]
    finish: list[str | None]
    tokens: list[int]
    logprobs: list[TokenLogprob | None] | None = None


@dataclass
class Completion:
    """One finished sample (:meth:`TextModel.complete`).

    Attributes:
        text: the generated text (prompt not included).
        finish: "stop" or "length".
        logprobs: its tokens scored (with ``logprobs=True``), else None.
    """

    text: str
    finish: str
    logprobs: list[TokenLogprob] | None = None


class TextModel:
    """A loaded text model with its tokenizer and default generation settings.

    Attributes:
        model: the ``nn.Module`` (``gpt`` or ``lstm``) in eval mode.
        tokenizer: its :class:`~aigc.data.tokenizer.Tokenizer`.
        defaults: :class:`~aigc.config.SampleConfig` read from generation_config.json.
        folder: the model folder it was loaded from.
        chat: its :class:`~aigc.data.chat.ChatTemplate` (tokenizer_config.json), None if not a chat model.
    """

    def __init__(self, model, tokenizer: Tokenizer, defaults: SampleConfig, folder: Path,
                 chat: ChatTemplate | None = None, compiled: bool = False):
        self.model, self.tokenizer, self.defaults, self.folder = model, tokenizer, defaults, folder
        self.chat = chat
        self.engine = Engine(model, compiled)  # compiled: the gpt's decode step through torch.compile
        self._heal_cache: dict[str, torch.Tensor] = {}
        self._grammars: dict = {}  # schema JSON -> a compiled matcher at the start of its grammar
        self._grammar_vocab: GrammarVocabulary | None = None
        self.watermark: WatermarkKey | None = None  # set (use_watermark) to watermark everything generated

    @classmethod
    def from_folder(cls, model, folder: Path, compiled: bool = False) -> "TextModel":
        """Wrap ``model`` with the tokenizer, sampling defaults and chat template of ``folder`` (an
        adapter without its own tokenizer: its base's).

        Raises:
            AigcError: a missing or corrupt tokenizer or generation_config.json, or a tokenizer
                larger than the model's vocabulary.
        """
        parts = companion_folder(folder)
        tokenizer = Tokenizer.load(parts / "tokenizer.json")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise AigcError(f"{folder}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                            f"{model.config.vocab_size}")
        return cls(model, tokenizer, read_sample_defaults(parts), folder, load_chat_template(parts), compiled)

    @property
    def family(self) -> str:
        return self.model.family

    @functools.cached_property
    def token_texts(self) -> list[str]:
        """The text of every token id (special tokens included), decoded once."""
        return [self.tokenizer.tk.decode([i], skip_special_tokens=False) for i in range(self.tokenizer.vocab_size)]

    @functools.cached_property
    def longest_token(self) -> int:
        """Characters in the longest token's text (at least 1): a text longer than ``limit`` times
        this cannot encode into ``limit`` tokens or fewer."""
        return max(map(len, self.token_texts)) or 1

    @functools.cached_property
    def token_bytes(self) -> list[bytes] | None:
        """The bytes of every token id (special tokens: none, as decoding skips them) for byte-level
        BPE and character tokenizers; None for others (then text comes from the tokenizer's decoder)."""
        tk = self.tokenizer.tk
        added = tk.get_added_tokens_decoder()  # id -> AddedToken: plain text, never byte-mapped
        byte_level = type(tk.decoder).__name__ == "ByteLevel"
        if not byte_level and self.tokenizer.kind != "char":
            return None
        table = _byte_level_table() if byte_level else {}
        out = [b""] * self.model.config.vocab_size
        for token, i in tk.get_vocab().items():
            if i >= len(out) or (i in added and added[i].special):
                continue
            if i in added or not byte_level:
                out[i] = token.encode("utf-8")
            else:
                out[i] = bytes(table[c] for c in token if c in table)
        return out

    # ------------------------------------------------------------ 1. settings
    def settings(self, base: SampleConfig | None = None, **overrides) -> SampleConfig:
        """``base`` (default: the model's defaults) with every override that is not None replaced.

        Raises:
            AigcError: an unknown setting or a value out of range (named first in the message).
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        known = {f.name for f in dataclasses.fields(SampleConfig)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise AigcError(f"{unknown[0]}: not a sampling setting (known: {', '.join(sorted(known))})")
        cfg = dataclasses.replace(base or self.defaults, **given)
        cfg.validate()
        if cfg.response_format != "text":
            self.grammar(cfg)  # a schema the compiler refuses is refused here, before any work
        return cfg

    def grammar(self, settings: SampleConfig):
        """The compiled grammar of ``settings.response_format``: a matcher to copy per sample
        (cached per schema; compiling takes up to about a second for a large schema).

        Raises:
            GrammarError: a schema that does not compile, or a tokenizer whose tokens are not bytes
                or characters.
        """
        if self.token_bytes is None:
            raise AigcError(f"{self.folder.name}: structured output needs a byte-level BPE or character "
                            "tokenizer (its tokens' bytes)")
        schema = settings.json_schema if settings.response_format == "json_schema" else None
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._grammar_vocab is None:
                self._grammar_vocab = GrammarVocabulary(
                    self.token_bytes, lambda s: self.tokenizer.tk.encode(s, add_special_tokens=False).ids,
                    self.tokenizer.eot_id)
            if len(self._grammars) >= 64:  # a server's cache of schemas stays bounded
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = self._grammar_vocab.compile(json_grammar(schema))
        return self._grammars[key]

    # ------------------------------------------------------------ 2. the prompt
    def encode(self, prompt: str, suffix: str | None = None, heal: bool | None = None, limit: int | None = None,
               what: str = "prompt") -> Prompt:
        """The one prompt-encoding path: the document-start token (``<|endoftext|>``, or a Llama
        vocabulary's ``<s>``) and the prompt's ids; with ``suffix`` the fill-in-the-middle prompt
        (PSM, a model trained with FIM) for the text between ``prompt`` and ``suffix``.

        Args:
            heal: token healing (default: ``defaults.token_healing``); with a BPE tokenizer a
                prompt's trailing whitespace is cut and the first token must start with it: a
                prompt ending in "\\n" otherwise forces a token boundary the model rarely saw in
                training (byte-level BPE merges a newline with the indentation after it). Never
                applied to an infill.
            limit: None: a prompt longer than the context is cropped from the left (with a
                warning); a number: a prompt of more tokens is refused (its characters are
                bounded first, so a huge text is refused before it is encoded).

        Raises:
            AigcError: a character the tokenizer cannot encode, a suffix for a model without
                FIM tokens; :class:`PromptTooLong` over ``limit``.
        """
        line_start = prompt.endswith("\n") or not prompt
        if limit is not None and len(prompt) + len(suffix or "") > limit * self.longest_token:
            raise PromptTooLong("suffix" if suffix is not None else what, None, limit)
        if suffix is not None:
            return Prompt(self._infill(prompt, suffix), "", line_start)
        healed = ""
        if (self.defaults.token_healing if heal is None else heal) and self.tokenizer.kind == "bpe":
            healed = prompt[len(prompt.rstrip()):] if prompt.strip() else ""
            if healed and not self._tokens_starting_with(healed).any():
                healed = ""
        ids = [self.tokenizer.bos_id] + self.tokenizer.encode(prompt[:len(prompt) - len(healed)], what)
        if limit is not None and len(ids) > limit:
            raise PromptTooLong(what, len(ids), limit)
        context = self.model.context_length
        if context is not None and len(ids) > context - 1:
            warnings.warn(f"prompt of {len(ids)} tokens is longer than the context ({context}); "
                          f"keeping its last {context - 1} tokens", stacklevel=3)
            ids = ids[-(context - 1):]
        return Prompt(ids, healed, line_start)

    def _infill(self, prefix: str, suffix: str) -> list[int]:
        """The PSM ids for the text between ``prefix`` and ``suffix``, cropped to fit the context
        (the prefix from the left, the suffix from the right, with a warning)."""
        ids = infill_prompt(self.tokenizer, prefix, suffix)
        limit = self.model.context_length
        if limit is not None and len(ids) > limit - 1:
            pre, mid, suf = fim_token_ids(self.tokenizer)
            p, s = self.tokenizer.encode(prefix), self.tokenizer.encode(suffix)
            room = limit - 1 - 4
            keep_s = min(len(s), room // 3)
            keep_p = room - keep_s
            warnings.warn(f"prefix + suffix of {len(p) + len(s)} tokens do not fit the context ({limit}); keeping "
                          f"the last {keep_p} tokens of the prefix and the first {keep_s} of the suffix", stacklevel=4)
            ids = [self.tokenizer.bos_id, pre] + p[len(p) - keep_p:] + [suf] + s[:keep_s] + [mid]
        return ids

    def _tokens_starting_with(self, text: str) -> torch.Tensor:
        """Bool ``(V,)``: the tokens whose text starts with ``text`` (cached per text)."""
        cache = self._heal_cache
        if text not in cache:
            mask = torch.zeros(self.model.config.vocab_size, dtype=torch.bool)
            for i, t in enumerate(self.token_texts):
                if t.startswith(text) and i != self.tokenizer.eot_id:
                    mask[i] = True
            cache[text] = mask
        return cache[text]

    # ------------------------------------------------------------ chat
    def render_chat(self, messages: list[dict]) -> str:
        """The prompt text of a conversation (the template's generation prompt at its end).

        Raises:
            AigcError: not a chat model, or bad messages (see :func:`aigc.data.chat.check_messages`).
        """
        if self.chat is None:
            raise AigcError(f"{self.folder.name} is not a chat model (its folder has no chat_template in "
                            "tokenizer_config.json); use plain completions")
        return self.chat.render(messages)

    def turn_end(self, settings: SampleConfig) -> SampleConfig:
        """``settings`` that also end at the template's end of turn: as a token when the vocabulary
        has it, else as a stop string."""
        eos = self.chat.eos_token if self.chat is not None else None
        if not eos:
            return settings
        eos_id = self.tokenizer.tk.token_to_id(eos)
        if eos_id is not None:
            return dataclasses.replace(settings, stop_token_ids=[*settings.stop_token_ids, eos_id])
        return dataclasses.replace(settings, stop=[*settings.stop, eos])

    # ------------------------------------------------------------ 3. tokens to text
    def steps(self, prompt: Prompt, settings: SampleConfig, n: int = 1, seed: int | None = None,
              batch: BatchEngine | None = None) -> Iterator[GenerationStep]:
        """Generate ``n`` samples after ``prompt``; yield one :class:`GenerationStep` per token.

        A sample ends at a stop string (not included), a stop token (``settings.stop_token_ids``,
        and the document-boundary token unless ``stop_at_document_end`` is off), a line at
        column 0 under ``code_stops``, or after ``max_new_tokens``.

        Args:
            batch: decode inside this :class:`~aigc.generate.engine.BatchEngine`, shared with other
                requests (its owner calls ``step()`` between ``next`` calls); None: this model's
                own :class:`~aigc.generate.engine.Engine`.

        Raises:
            RowsFull: ``batch`` has no room now (at the first ``next``).
        """
        stop_ids = set(settings.stop_token_ids)
        if settings.stop_at_document_end:
            stop_ids.add(self.tokenizer.eot_id)
        by_bytes = self.token_bytes is not None
        tokens: list[list[int]] = [[] for _ in range(n)]
        raw = [bytearray() for _ in range(n)] if by_bytes else [None] * n  # each sample's bytes so far
        emitted = [0] * n  # characters of each sample already yielded
        finish: list[str | None] = [None] * n
        hold = max((len(s) for s in settings.stop), default=1) - 1  # text that could still start a stop string
        if settings.code_stops:
            hold = max(hold, 1)  # a final newline may turn out to be a dedent
        allowed = self._tokens_starting_with(prompt.healed) if prompt.healed else None
        hook = self.request_hook(settings, n, stop_ids, prompt.ids)
        if batch is not None:
            source = batch.add(prompt.ids, n, settings, seed, allowed, hook)
        else:
            source = self.engine.generate(prompt.ids, n, settings, seed, allowed, hook)
        try:
            for step, nxt in enumerate(source):
                pieces = [""] * n
                scored = [None] * n if settings.logprobs else None
                for i, tok in enumerate(nxt.tolist()):
                    if finish[i]:
                        continue
                    if scored is not None and tok not in stop_ids:
                        scored[i] = hook.last[i]
                    text, finish[i] = self._advance(tokens[i], raw[i], tok, stop_ids, settings, prompt, step)
                    complete = len(text) if by_bytes or finish[i] else len(text.rstrip("\ufffd"))  # decoded so far
                    safe = complete if finish[i] else complete - hold  # what no stop string can still take back
                    if safe > emitted[i]:
                        pieces[i] = text[emitted[i]:safe]
                        emitted[i] = safe
                yield GenerationStep(pieces, list(finish), [len(t) for t in tokens], scored)
                if all(finish):
                    break
        finally:
            source.close()

    def request_hook(self, settings: SampleConfig, n: int, stop_ids: set[int], prompt_ids: list[int]) -> RequestHook | None:
        """The engine hook of a request: log-probabilities and a grammar when its settings ask, the
        model's watermark when it has one."""
        grammar = None
        if settings.response_format != "text":
            start = self.grammar(settings)  # compiled when the settings were checked; cached
            grammar = GrammarState(self._grammar_vocab, start, n, stop_ids, self.token_texts.__getitem__)
        mark = WatermarkState(self.watermark, prompt_ids, n, self.model.config.vocab_size) if self.watermark else None
        if grammar is None and mark is None and not settings.logprobs:
            return None
        return RequestHook(n, settings.top_logprobs if settings.logprobs else None, grammar, mark)

    def use_watermark(self, key: WatermarkKey | None) -> None:
        """Watermark everything this model generates from now on with ``key`` (None: stop).

        Raises:
            AigcError: a key made for another tokenizer or vocabulary.
        """
        if key is not None:
            if getattr(key, "scheme", "") == "treering":
                raise AigcError("a Tree-Ring key marks a diffusion model's images; a text model needs a text key "
                                "(aigc keygen TEXT_MODEL)")
            key.check_tokenizer(self.tokenizer)
        self.watermark = key

    def score(self, prompt: Prompt | str, top: int = 0) -> list[TokenLogprob]:
        """The log-probability of each token of ``prompt`` (a text, or a :class:`Prompt`) after the
        ones before it (the document-start token is context, not scored), with ``top`` alternatives
        each: the per-token loss ``aigc eval`` averages, negated.

        Raises:
            AigcError: a text the tokenizer cannot encode, or longer than the model's context.
        """
        if isinstance(prompt, str):
            prompt = self.encode(prompt, heal=False, limit=self.model.context_length)
        return score_prompt(self.model, prompt.ids, top)

    def _advance(self, tokens: list[int], raw: bytearray | None, tok: int, stop_ids: set[int],
                 settings: SampleConfig, prompt: Prompt, step: int) -> tuple[str, str | None]:
        """Add token ``tok`` to one sample (``tokens`` and its bytes ``raw``, in place); return its
        text so far, cut at a stop, and its finish reason (None while it runs).

        The text is the UTF-8 decoding of the sample's bytes with invalid bytes dropped and an
        incomplete character at the end left out until its bytes arrive (at the end of the sample
        it is dropped): no U+FFFD is ever made up. Tokenizers whose tokens are not bytes or
        characters (``token_bytes`` None) decode through their own decoder instead; a U+FFFD it
        makes at the very end is dropped when the sample ends."""
        drop = len(prompt.healed)
        if tok in stop_ids:
            return self._decoded(tokens, raw, True)[drop:], "stop"
        tokens.append(tok)
        if raw is not None:
            raw += self.token_bytes[tok] if tok < len(self.token_bytes) else b""
        text = self._decoded(tokens, raw, False)[drop:]
        cut = min((text.find(s) for s in settings.stop if s in text), default=-1)
        if settings.code_stops:
            end = code_end(text, prompt.line_start)
            if end >= 0 and (cut < 0 or end < cut):
                cut = end
        if cut >= 0:
            return text[:cut], "stop"
        if step == settings.max_new_tokens - 1:
            return (text if raw is not None else text.rstrip("\ufffd")), "length"
        return text, None

    def _decoded(self, tokens: list[int], raw: bytearray | None, final: bool) -> str:
        if raw is not None:
            return raw.decode("utf-8", errors="ignore")
        text = self.tokenizer.decode(tokens)
        return text.rstrip("\ufffd") if final else text

    # ------------------------------------------------------------ the Python API
    def stream_batch(self, prompt: str, n: int = 1, seed: int | None = None, suffix: str | None = None,
                     settings: SampleConfig | None = None, **overrides) -> Iterator[list[str]]:
        """Generate ``n`` samples together; yield, per step, the new text of each sample.

        ``settings`` (default: the model's defaults) with ``overrides`` replaced (max_new_tokens,
        temperature, top_k, top_p, repetition_penalty, presence_penalty, frequency_penalty, stop,
        stop_token_ids, stop_at_document_end, code_stops, token_healing; see
        :class:`~aigc.config.SampleConfig`). With ``suffix``, fill in the middle between ``prompt``
        and ``suffix`` (a model trained with FIM).

        Raises:
            AigcError: a prompt the tokenizer cannot encode, or a setting out of range.
        """
        cfg = self.settings(settings, **overrides)
        for step in self.steps(self._encode_for(prompt, suffix, cfg), cfg, n, seed):
            yield step.pieces

    def _encode_for(self, prompt: str, suffix: str | None, cfg: SampleConfig) -> Prompt:
        """The prompt for ``cfg``: no token healing under a grammar (the healed text is no JSON)."""
        return self.encode(prompt, suffix, heal=cfg.token_healing and cfg.response_format == "text")

    def complete(self, prompt: str, n: int = 1, seed: int | None = None, suffix: str | None = None,
                 settings: SampleConfig | None = None, **overrides) -> list[Completion]:
        """``n`` samples after ``prompt`` as :class:`Completion` objects (text, finish reason and, with
        ``logprobs=True``, each token's log-probability and ``top_logprobs`` alternatives). Takes the
        overrides of :meth:`stream_batch`, among them ``logprobs``, ``top_logprobs``,
        ``response_format`` and ``json_schema``.

        Raises:
            AigcError: a prompt the tokenizer cannot encode, or a setting out of range.
        """
        cfg = self.settings(settings, **overrides)
        texts, finish = [""] * n, [None] * n
        scored: list[list[TokenLogprob]] = [[] for _ in range(n)]
        for step in self.steps(self._encode_for(prompt, suffix, cfg), cfg, n, seed):
            texts = [t + p for t, p in zip(texts, step.pieces)]
            finish = step.finish
            for i, lp in enumerate(step.logprobs or []):
                if lp is not None:
                    scored[i].append(lp)
        return [Completion(t, f or "length", s if cfg.logprobs else None) for t, f, s in zip(texts, finish, scored)]

    def stream(self, prompt: str, seed: int | None = None, **kwargs) -> Iterator[str]:
        """Generate one sample and yield its text piece by piece as tokens arrive (prompt not included).
        Takes ``suffix``, ``settings`` and the overrides of :meth:`stream_batch`."""
        for pieces in self.stream_batch(prompt, 1, seed, **kwargs):
            if pieces[0]:
                yield pieces[0]

    def generate(self, prompt: str, n: int = 1, seed: int | None = None, include_prompt: bool = True,
                 **kwargs) -> list[str]:
        """``n`` samples continuing ``prompt``, each a string (with the prompt in front by default).
        Takes ``suffix``, ``settings`` and the overrides of :meth:`stream_batch`.

        Raises:
            AigcError: a prompt the tokenizer cannot encode, or a setting out of range.
        """
        texts = [""] * n
        for pieces in self.stream_batch(prompt, n, seed, **kwargs):
            texts = [t + p for t, p in zip(texts, pieces)]
        return [prompt + t if include_prompt else t for t in texts]
