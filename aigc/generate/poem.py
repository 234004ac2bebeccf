"""Regulated verse by constrained decoding: the poem's form, tones and rhyme hold by construction, and
the best of several candidates is kept by the model's own likelihood.

Before each character the sampler may draw only tokens that keep the poem inside its form
(:mod:`aigc.data.poetry`): at a character position the CJK characters whose tone fits the
sample's tonal template there (the checked positions; with the 一三五不论 leniency only the
second, fourth, sixth and last), at a rhyming line's last position the 平 characters of the
poem's rhyme group (fixed by the first rhyming line; no rhyme character twice), then exactly ``，`` or ``。``, a newline after
each couplet, and the end of the document after the last. An acrostic (藏头诗) fixes each
line's first character. A line of the training corpus is never completed verbatim: at a line's
last position the characters that would finish one are masked. It works through the engine's
hook (``allowed()`` / ``advance()``, :mod:`aigc.generate.engine`), so the model's own
distribution chooses among what the rules leave.

Candidates are ranked by the mean log-likelihood per character of their body under the model,
unconstrained (the reranking of Jiuge, Yi et al. 2018-2020, by the model's score).
"""

from __future__ import annotations

import functools
import lzma
import random
import weakref
from dataclasses import dataclass

import torch

from aigc.config import SampleConfig
from aigc.data.poetry import Form, check, form_named, parse_instruction, required_positions, templates
from aigc.data.rhyme import PING, rhyme_tables
from aigc.data.sources import DATASETS, jsonl_documents
from aigc.errors import AigcError
from aigc.generate.logprobs import RequestHook


def _is_cjk(ch: str) -> bool:
    return len(ch) == 1 and ("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")


class PoemVocabulary:
    """Token-id masks of a character tokenizer for the poem constraints (built once per model).

    Raises:
        AigcError: a tokenizer without ``，``, ``。`` or a newline as tokens (not a character model of poems).
    """

    def __init__(self, tm):
        tables = rhyme_tables()
        texts = [tm.token_texts[i] for i in range(tm.tokenizer.vocab_size)]
        vocab = tm.model.config.vocab_size
        self.size, self.eot = vocab, tm.tokenizer.eot_id
        self.ids = {t: i for i, t in enumerate(texts) if len(t) == 1}
        for mark in ("，", "。", "\n"):
            if mark not in self.ids:
                raise AigcError(f"the model's vocabulary has no {mark!r} token: constrained poems need a character "
                                "model of poems (such as tang-base)")
        self.cjk = torch.zeros(vocab, dtype=torch.bool)
        self.tone = {PING: torch.zeros(vocab, dtype=torch.bool), "仄": torch.zeros(vocab, dtype=torch.bool)}
        self.groups: dict[str, torch.Tensor] = {}
        for i, t in enumerate(texts):
            if not _is_cjk(t) or not tables.knows(t):
                continue
            self.cjk[i] = True
            for tone in tables.tones(t):
                self.tone[tone][i] = True
            for g in tables.shi_groups(t):
                if tables.groups[g] == PING:
                    self.groups.setdefault(g, torch.zeros(vocab, dtype=torch.bool))[i] = True
        self.texts = texts

    def only(self, text: str) -> torch.Tensor:
        """Bool ``(V,)``: just the token of ``text``."""
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[self.ids[text]] = True
        return mask


@dataclass
class PoemPlan:
    """What every sample must be: ``form``, one template per sample, the acrostic characters (or ""),
    the tone leniency, and the training lines never to complete (prefix -> last characters)."""

    form: Form
    templates: list[list[str]]
    acrostic: str
    lenient: bool
    forbidden: dict[str, set[str]]


class PoemState:
    """The constraint of one request of ``n`` samples, as an engine grammar: ``allowed()`` then ``advance()``."""

    def __init__(self, vocab: PoemVocabulary, plan: PoemPlan):
        self.v, self.plan = vocab, plan
        form = plan.form
        self.slots: list[tuple] = []  # ("char", line, position) | ("mark", text) | ("end",)
        for line in range(form.lines):
            self.slots += [("char", line, i) for i in range(form.chars)]
            self.slots.append(("mark", "，" if line % 2 == 0 else "。"))
            if line % 2 == 1:
                self.slots.append(("mark", "\n") if line < form.lines - 1 else ("end",))
        n = len(plan.templates)
        self.at = [0] * n
        self.line = [""] * n  # each sample's current line
        self.group: list[set[str] | None] = [None] * n  # candidate rhyme groups once the first rhyme is drawn
        self.rhymed: list[set[int]] = [set() for _ in range(n)]  # rhyme characters used (never twice: 重韵)
        self.checked = set(required_positions(form.chars, plan.lenient))

    def _rhymes(self, sample: int, line: int) -> bool:
        first_rhymed = self.plan.templates[sample][0][-1] == PING
        return line % 2 == 1 or (line == 0 and first_rhymed)

    def _char_mask(self, sample: int, line: int, pos: int) -> torch.Tensor:
        v, plan = self.v, self.plan
        if pos == 0 and line < len(plan.acrostic):
            return v.only(plan.acrostic[line])
        mask = v.cjk.clone()
        if pos in self.checked:
            mask &= v.tone[plan.templates[sample][line][pos]]
        if pos == plan.form.chars - 1:
            if self._rhymes(sample, line):
                groups = self.group[sample]
                rhyme = torch.zeros_like(mask)
                for g in (groups if groups is not None else v.groups):
                    rhyme |= v.groups[g]
                mask &= rhyme
                mask[list(self.rhymed[sample])] = False
            for ch in plan.forbidden.get(self.line[sample], ()):  # never complete a training line
                if ch in v.ids:
                    mask[v.ids[ch]] = False
        return mask

    def allowed(self) -> torch.Tensor:
        """Bool ``(n, V)``: the tokens each sample may draw next.

        Raises:
            AigcError: a position where no token is left (constraints nothing can meet).
        """
        rows = []
        for s, at in enumerate(self.at):
            slot = self.slots[min(at, len(self.slots) - 1)]
            if slot[0] == "char":
                mask = self._char_mask(s, slot[1], slot[2])
            elif slot[0] == "mark":
                mask = self.v.only(slot[1])
            else:
                mask = torch.zeros(self.v.size, dtype=torch.bool)
                mask[self.v.eot] = True
            if not mask.any():
                raise AigcError(f"no character can fill line {slot[1] + 1}, position {slot[2] + 1} under these "
                                "constraints (tone, rhyme, acrostic, no copied lines); try another seed or form")
            rows.append(mask)
        return torch.stack(rows)

    def advance(self, tokens: list[int]) -> None:
        """Record each sample's drawn token."""
        tables = rhyme_tables()
        for s, tok in enumerate(tokens):
            slot = self.slots[min(self.at[s], len(self.slots) - 1)]
            if slot[0] == "char":
                ch = self.v.texts[tok]
                if slot[2] == self.plan.form.chars - 1 and self._rhymes(s, slot[1]):
                    mine = {g for g in tables.shi_groups(ch) if tables.groups[g] == PING}
                    self.group[s] = mine if self.group[s] is None else self.group[s] & mine
                    self.rhymed[s].add(tok)
                self.line[s] += ch
            else:
                self.line[s] = ""
            self.at[s] += 1


_VOCABS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def poem_vocabulary(tm) -> PoemVocabulary:
    """The :class:`PoemVocabulary` of text model ``tm``, built once."""
    if tm not in _VOCABS:
        _VOCABS[tm] = PoemVocabulary(tm)
    return _VOCABS[tm]


def writes_poems(tm) -> bool:
    """Can ``tm`` write constrained poems (a character vocabulary with ，。 and at least 500 characters of
    the rhyme tables)?"""
    try:
        return int(poem_vocabulary(tm).cjk.sum()) >= 500
    except AigcError:
        return False


def training_lines(docs: list[str], chars: int) -> dict[str, set[str]]:
    """Every line of ``chars`` characters in ``docs`` (poems as the corpus holds them), as prefix ->
    the last characters that complete one."""
    out: dict[str, set[str]] = {}
    for d in docs:
        for row in d.split("\n"):
            for part in row.replace("。", "，").replace("？", "，").replace("！", "，").split("，"):
                if len(part) == chars:
                    out.setdefault(part[:-1], set()).add(part[-1])
    return out


@functools.lru_cache(maxsize=2)
def shipped_lines(chars: int) -> dict[str, set[str]]:
    """:func:`training_lines` of the shipped tang-poems corpus (what tang-base read)."""
    info = DATASETS["tang-poems"]
    docs = jsonl_documents(lzma.decompress(info["path"].read_bytes()).decode("utf-8"), "text", "tang-poems")
    return training_lines(docs, chars)


def plan_poem(form: Form | str, n: int, seed: int, acrostic: str = "", lenient: bool = True,
              forbidden: dict[str, set[str]] | None = None, vocab: PoemVocabulary | None = None) -> PoemPlan:
    """A :class:`PoemPlan` for ``n`` samples; sample i takes a tonal template drawn with seed ``seed + i``.

    Raises:
        AigcError: an acrostic of the wrong length or with a character the vocabulary lacks (named).
    """
    form = form_named(form) if isinstance(form, str) else form
    if acrostic:
        if len(acrostic) > form.lines:
            raise AigcError(f"acrostic {acrostic!r}: {len(acrostic)} characters; a {form.name} has {form.lines} lines "
                            "(an acrostic fixes the first characters of as many lines as it has characters)")
        if vocab is not None:
            missing = [c for c in acrostic if c not in vocab.ids or not vocab.cjk[vocab.ids[c]]]
            if missing:
                raise AigcError(f"acrostic character {missing[0]!r} is not in the model's vocabulary (or not a "
                                "character of the rhyme tables)")
    names = list(templates(form).values())
    if acrostic and not lenient:  # every character's tone is checked: the acrostic's must fit the template
        tables = rhyme_tables()
        names = [t for t in names if all(t[k][0] in tables.tones(c) for k, c in enumerate(acrostic))]  # noqa: E501
        if not names:
            raise AigcError(f"acrostic {acrostic!r}: no tonal template of the {form.name} fits the tones of its "
                            "characters when every position is checked (--strict); drop --strict or change a character")
    picks = [names[random.Random(seed + i).randrange(len(names))] for i in range(n)]
    return PoemPlan(form, picks, acrostic, lenient, forbidden or {})


def write_poems(tm, theme: str, form: Form | str, n: int = 4, seed: int = 0, acrostic: str = "",
                lenient: bool = True, forbidden: dict[str, set[str]] | None = None,
                settings: SampleConfig | None = None) -> list[dict]:
    """``n`` poems titled ``theme`` in ``form``, best first by mean log-likelihood per character.

    Returns:
        one dict per poem: ``text`` (title line and body), ``score`` (mean log-probability per body
        character, nats), ``verdict`` (:func:`aigc.data.poetry.check`), ``seed``.
    Raises:
        AigcError: a bad form, acrostic or theme (longer than the context leaves room for), or
            constraints no candidate can meet.
    """
    form = form_named(form) if isinstance(form, str) else form
    vocab = poem_vocabulary(tm)
    plan = plan_poem(form, n, seed, acrostic, lenient, forbidden, vocab)
    state = PoemState(vocab, plan)
    title = theme.strip()
    prompt = tm.encode(title + "\n").ids
    room = tm.model.context_length
    if room is not None and len(prompt) + len(state.slots) > room:
        raise AigcError(f"theme of {len(title)} characters: with a {form.name} it needs {len(prompt) + len(state.slots)} "
                        f"tokens; the model's context is {room}")
    settings = settings or tm.settings()
    settings = SampleConfig(**{**settings.__dict__, "max_new_tokens": len(state.slots), "logprobs": False})
    hook = RequestHook(n, None, grammar=state)
    bodies = [[] for _ in range(n)]
    for step, nxt in enumerate(tm.engine.generate(prompt, n, settings, seed, None, hook)):
        for i, tok in enumerate(nxt.tolist()):
            if tok != vocab.eot:
                bodies[i].append(tok)
        if step + 1 >= len(state.slots):
            break
    out = []
    for i, body in enumerate(bodies):
        text = title + "\n" + "".join(vocab.texts[t] for t in body)
        scored = tm.score(text)[len(prompt) - 1:]  # the body's tokens (the title is context)
        chars = [e for e in scored if e.token != vocab.ids["\n"]]
        score = sum(e.logprob for e in chars) / max(len(chars), 1)
        out.append({"text": text, "score": score, "verdict": check(text, form, lenient), "seed": seed + i})
    return sorted(out, key=lambda p: -p["score"])


def poems_for_instruction(tm, text: str, n: int = 1, seed: int | None = None) -> list[dict] | None:
    """Poems for a request in plain Chinese (:func:`aigc.data.poetry.parse_instruction`: 写一首关于秋天的
    七言绝句), best first; None when ``text`` asks for no poem or ``tm`` is not a character model of poems.

    Raises:
        AigcError: a theme or acrostic character the model lacks, or constraints nothing meets.
    """
    order = parse_instruction(text)
    if order is None:
        return None
    try:
        poem_vocabulary(tm)
    except AigcError:
        return None
    form = form_named(order["form"])
    seed = random.randrange(2**31) if seed is None else seed
    return write_poems(tm, order["theme"], form, n, seed, order["acrostic"], forbidden=shipped_lines(form.chars))
