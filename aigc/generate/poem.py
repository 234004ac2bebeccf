"""Regulated verse by constrained decoding: the poem's form, tones and rhyme hold by construction, and
the best of several candidates is kept by the model's own likelihood.

Before each character the sampler may draw only tokens that keep the poem inside its form
(:mod:`aigc.data.poetry`): at a character position the CJK characters whose tone fits the
sample's tonal template there (the checked positions; with the 一三五不论 leniency only the
second, fourth, sixth and last), at a rhyming line's last position the 平 characters of the
poem's rhyme group (fixed by the first rhyming line; no rhyme character twice), then exactly ``，`` or ``。``, a newline after
each couplet, and the end of the document after the last. No character comes twice in a poem (regulated
verse avoids 重字), except a reduplication (叠字: 萧萧, 纷纷), which may follow its character once
within a line; ``repeats=True`` lifts the rule. An acrostic (藏头诗) fixes each
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
from aigc.data.poetry import (FORMS, Form, Tune, check, check_ci, form_named, parse_instruction, required_positions,
                               templates, tunes)
from aigc.data.rhyme import PING, rhyme_tables
from aigc.data.sources import DATASETS, jsonl_documents
from aigc.errors import AigcError
from aigc.generate.logprobs import RequestHook
from aigc.generate.text import PromptTooLong


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
            for part in tables.ci_parts(t):  # 词林正韵 部 with tone: 第一部平
                self.groups.setdefault(part, torch.zeros(vocab, dtype=torch.bool))[i] = True
        self.texts = texts

    def only(self, text: str) -> torch.Tensor:
        """Bool ``(V,)``: just the token of ``text``."""
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[self.ids[text]] = True
        return mask


@dataclass
class LineSpec:
    """One line (clause) of a poem: ``chars`` characters, then ``mark`` (， or 。); ``rhyme``: its last
    character rhymes; ``tones``: per position 平, 仄 or 中 (free)."""

    chars: int
    mark: str
    rhyme: bool
    tones: str


@dataclass
class PoemPlan:
    """What every sample must be: its lines (one list per sample: the same lengths and marks, each
    sample's own tonal template), the rhyme table (``shi``: 平 groups of the 平水韵; ``ci``: the 词林正韵
    部 of tone ``ci_tone``), the acrostic characters (or ""), and the training lines never to complete
    (prefix -> last characters). ``name``: the form or tune, for the checker. ``repeats``: a character may
    come twice in a poem (by default only a 叠字 may)."""

    name: str
    lines: list[list[LineSpec]]
    rhyme: str
    acrostic: str
    forbidden: dict[str, set[str]]
    ci_tone: str = PING
    repeats: bool = False


class PoemState:
    """The constraint of one request of ``n`` samples, as an engine grammar: ``allowed()`` then ``advance()``."""

    def __init__(self, vocab: PoemVocabulary, plan: PoemPlan):
        self.v, self.plan = vocab, plan
        self.slots: list[tuple] = []  # ("char", line, position) | ("mark", text) | ("end",)
        specs = plan.lines[0]
        for k, spec in enumerate(specs):
            self.slots += [("char", k, i) for i in range(spec.chars)]
            self.slots.append(("mark", spec.mark))
            if spec.mark == "。":
                self.slots.append(("mark", "\n") if k < len(specs) - 1 else ("end",))
        if specs[-1].mark != "。":
            self.slots.append(("end",))
        n = len(plan.lines)
        self.at = [0] * n
        self.line = [""] * n  # each sample's current line
        self.group: list[set[str] | None] = [None] * n  # candidate rhyme groups once the first rhyme is drawn
        self.rhymed: list[set[int]] = [set() for _ in range(n)]  # rhyme characters used (never twice: 重韵)
        reserved = {vocab.ids[c] for c in plan.acrostic if c in vocab.ids}  # kept for their own line's start
        self.used: list[set[int]] = [set(reserved) for _ in range(n)]  # characters in the poem so far (重字)
        self.double: list[bool] = [False] * n  # the line's last two characters are a 叠字
        tables = rhyme_tables()
        if plan.rhyme == "shi":
            self.all_groups = {g for g in vocab.groups if g in tables.groups}
        else:
            self.all_groups = {g for g in vocab.groups if g.startswith("第") and g.endswith(plan.ci_tone)}

    def _groups_of(self, ch: str) -> set[str]:
        tables = rhyme_tables()
        if self.plan.rhyme == "shi":
            return {g for g in tables.shi_groups(ch) if tables.groups[g] == PING}
        return {p for p in tables.ci_parts(ch) if p.endswith(self.plan.ci_tone)}

    def _char_mask(self, sample: int, line: int, pos: int) -> torch.Tensor:
        v, plan = self.v, self.plan
        if pos == 0 and line < len(plan.acrostic):
            return v.only(plan.acrostic[line])
        spec = plan.lines[sample][line]
        mask = v.cjk.clone()
        if spec.tones[pos] in (PING, "仄"):
            mask &= v.tone[spec.tones[pos]]
        if pos == spec.chars - 1:
            if spec.rhyme:
                groups = self.group[sample]
                rhyme = torch.zeros_like(mask)
                for g in (groups if groups is not None else self.all_groups):
                    rhyme |= v.groups[g]
                mask &= rhyme
                mask[list(self.rhymed[sample])] = False
            for ch in plan.forbidden.get(self.line[sample], ()):  # never complete a training line
                if ch in v.ids:
                    mask[v.ids[ch]] = False
        if not plan.repeats:
            used = set(self.used[sample])
            if pos > 0 and not self.double[sample]:  # a 叠字 may follow its character once
                used.discard(v.ids[self.line[sample][-1]])
            mask[list(used)] = False
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
        for s, tok in enumerate(tokens):
            slot = self.slots[min(self.at[s], len(self.slots) - 1)]
            if slot[0] == "char":
                ch = self.v.texts[tok]
                spec = self.plan.lines[s][slot[1]]
                if slot[2] == spec.chars - 1 and spec.rhyme:
                    mine = self._groups_of(ch)
                    self.group[s] = mine if self.group[s] is None else self.group[s] & mine
                    self.rhymed[s].add(tok)
                self.double[s] = bool(self.line[s]) and self.line[s][-1] == ch and not self.double[s]
                self.used[s].add(tok)
                self.line[s] += ch
            else:
                self.line[s], self.double[s] = "", False
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


def shape_named(name: str) -> Form | Tune:
    """A regulated-verse form (七言绝句, 七绝, ...) or a ci tune (西江月, ...) by name.

    Raises:
        AigcError: neither, listing both.
    """
    try:
        return form_named(name)
    except AigcError:
        pass
    if name in tunes():
        return tunes()[name]
    raise AigcError(f"{name!r}: neither a form ({', '.join(FORMS)}) nor a known tune ({', '.join(tunes())})")


def _shi_lines(form: Form, template: list[str], lenient: bool) -> list[LineSpec]:
    checked = set(required_positions(form.chars, lenient))
    return [LineSpec(form.chars, "，" if k % 2 == 0 else "。", k % 2 == 1 or (k == 0 and template[0][-1] == PING),
                     "".join(t if i in checked else "中" for i, t in enumerate(tones)))
            for k, tones in enumerate(template)]


def forbidden_lines(form: Form | Tune) -> dict[str, set[str]]:
    """The shipped corpus's lines of every length ``form`` has (prefix -> completing characters)."""
    return _lines_of_lengths(tuple(sorted({x["chars"] for x in form.lines} if isinstance(form, Tune) else {form.chars})))


@functools.lru_cache(maxsize=32)
def _lines_of_lengths(lengths: tuple[int, ...]) -> dict[str, set[str]]:
    """The merged :func:`shipped_lines` of these lengths, once per process (a tune's take 0.2 s to merge)."""
    out: dict[str, set[str]] = {}
    for chars in lengths:
        for prefix, last in shipped_lines(chars).items():
            out.setdefault(prefix, set()).update(last)
    return out


def plan_poem(form: Form | Tune | str, n: int, seed: int, acrostic: str = "", lenient: bool = True,
              forbidden: dict[str, set[str]] | None = None, vocab: PoemVocabulary | None = None,
              repeats: bool = False) -> PoemPlan:
    """A :class:`PoemPlan` for ``n`` samples; for a form, sample i takes a tonal template drawn with seed
    ``seed + i``; a tune has one pattern.

    Raises:
        AigcError: an acrostic longer than the lines or with a character the vocabulary lacks (named), or
            one whose tones no template fits under strict checking.
    """
    form = shape_named(form) if isinstance(form, str) else form
    count = len(form.lines) if isinstance(form, Tune) else form.lines
    if acrostic:
        if len(acrostic) > count:
            raise AigcError(f"acrostic {acrostic!r}: {len(acrostic)} characters; a {form.name} has {count} lines "
                            "(an acrostic fixes the first characters of as many lines as it has characters)")
        if vocab is not None:
            missing = [c for c in acrostic if c not in vocab.ids or not vocab.cjk[vocab.ids[c]]]
            if missing:
                raise AigcError(f"acrostic character {missing[0]!r} is not in the model's vocabulary (or not a "
                                "character of the rhyme tables)")
    if isinstance(form, Tune):
        specs = [LineSpec(x["chars"], x["mark"], x["rhyme"], x["tones"]) for x in form.lines]
        if acrostic:  # the acrostic's characters stand where the tune fixes no tone, or fit it
            specs = [LineSpec(x.chars, x.mark, x.rhyme, ("中" + x.tones[1:]) if k < len(acrostic) else x.tones)
                     for k, x in enumerate(specs)]
        return PoemPlan(form.name, [specs] * n, "ci", acrostic, forbidden or {}, form.rhyme_tone, repeats)
    names = list(templates(form).values())
    if acrostic and not lenient:  # every character's tone is checked: the acrostic's must fit the template
        tables = rhyme_tables()
        names = [t for t in names if all(t[k][0] in tables.tones(c) for k, c in enumerate(acrostic))]
        if not names:
            raise AigcError(f"acrostic {acrostic!r}: no tonal template of the {form.name} fits the tones of its "
                            "characters when every position is checked (--strict); drop --strict or change a character")
    picks = [names[random.Random(seed + i).randrange(len(names))] for i in range(n)]
    return PoemPlan(form.name, [_shi_lines(form, t, lenient) for t in picks], "shi", acrostic, forbidden or {},
                    repeats=repeats)


def poem_title(form: Form | Tune, theme: str) -> str:
    """A poem's title line: the theme, or ``TUNE·THEME`` for a ci."""
    return theme.strip() if isinstance(form, Form) else f"{form.name}·{theme.strip()}"


def poem_prompt(tm, form: Form | Tune, theme: str, slots: int) -> list[int]:
    """The prompt ids of a poem titled ``theme`` (a ci's title line is ``TUNE·THEME``), its line break included.

    Raises:
        AigcError: a title that leaves the model's context less than the poem's ``slots`` tokens, with the
            whole count (a theme the context would crop is refused, not cut).
    """
    title = poem_title(form, theme)
    room = tm.model.context_length
    try:
        return tm.encode(title + "\n", limit=None if room is None else room - slots).ids
    except PromptTooLong as e:
        need = f"{e.tokens + slots} tokens" if e.tokens is not None else f"more than {room} tokens"
        raise AigcError(f"theme of {len(title)} characters: with a {form.name} it needs {need}; the model's context "
                        f"is {room}") from None


def write_poems(tm, theme: str, form: Form | Tune | str, n: int = 4, seed: int = 0, acrostic: str = "",
                lenient: bool = True, forbidden: dict[str, set[str]] | None = None,
                settings: SampleConfig | None = None, repeats: bool = False) -> list[dict]:
    """``n`` poems titled ``theme`` in ``form`` (a regulated-verse form, or a ci tune: then the title line is
    ``TUNE·THEME``), best first by mean log-likelihood per character; ``repeats``: allow a character twice
    (by default only a 叠字 repeats, see :class:`PoemPlan`).

    Returns:
        one dict per poem: ``text`` (title line and body), ``score`` (mean log-probability per body
        character, nats), ``verdict`` (:func:`aigc.data.poetry.check`), ``seed``.
    Raises:
        AigcError: a bad form, acrostic or theme (longer than the context leaves room for), or
            constraints no candidate can meet.
    """
    form = shape_named(form) if isinstance(form, str) else form
    vocab = poem_vocabulary(tm)
    plan = plan_poem(form, n, seed, acrostic, lenient, forbidden, vocab, repeats)
    state = PoemState(vocab, plan)
    prompt = poem_prompt(tm, form, theme, len(state.slots))
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
        text = poem_title(form, theme) + "\n" + "".join(vocab.texts[t] for t in body)
        scored = tm.score(text)[len(prompt) - 1:]  # the body's tokens (the title is context)
        chars = [e for e in scored if e.token != vocab.ids["\n"]]
        score = sum(e.logprob for e in chars) / max(len(chars), 1)
        verdict = check(text, form, lenient) if isinstance(form, Form) else check_ci(text, form)
        out.append({"text": text, "score": score, "verdict": verdict, "seed": seed + i})
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
    return write_poems(tm, order["theme"], form, n, seed, order["acrostic"], forbidden=forbidden_lines(form))
