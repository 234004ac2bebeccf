"""A content policy for the server (``aigc serve --policy POLICY.toml``): prompts and outputs checked
against patterns and optional classifier hooks.

A refused prompt is answered 400 in OpenAI's error shape with ``code: "content_policy_violation"``
and the rule's reason code in the message; an output that matches is cut where the match starts,
with ``finish_reason: "content_filter"`` (as OpenAI does). Outputs are checked together with the
end of their prompt (the prompt's last ``context`` characters), so a phrase split between the two
is caught. A stream holds back its last ``stream_hold`` characters until they can no longer begin
a match of that length, so a cut stream has sent nothing of the refused text unless a pattern
spans more than that. Log-probabilities of generated tokens are not offered under an output
policy (they would spell out the cut text). Each refusal is counted in ``/metrics`` (``aigc_policy_refusals_total`` by where and
reason) and logged on the ``aigc.policy`` logger by rule and reason, without the text unless the
file says ``log_text = true``.

The file::

    log_text = false                     # optional: log the refused text too
    stream_hold = 64                     # optional: characters a stream holds back (0 to 4096)
    context = 200                        # optional: prompt characters checked with the output

    [[rule]]
    reason = "violence"                  # the reason code clients see (letters, digits, _ . -)
    patterns = ['(?i)\\bkill (him|her|them)\\b', 'how to make a bomb']   # Python regular expressions
    applies_to = ["prompt", "output"]    # optional, default both

    [[hook]]
    call = "mypackage.moderation:check"  # a function (text, where) -> None or a reason code
    applies_to = ["output"]

A hook that raises refuses the text (reason ``policy_error``): a policy fails closed. Hooks run
on the server's event loop for every generated piece: keep them fast (a slow hook slows every
request), and plain functions (an ``async def`` is refused when the file is read).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tomllib

from aigc.errors import AigcError

WHERE = ("prompt", "output")
_REASON = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
log = logging.getLogger("aigc.policy")


@dataclass
class Refusal:
    """Why a text was refused: the rule's ``reason`` code, which rule (``rule``: "rule 2" or the hook)
    and where the match starts in the text (None for a hook, which names no place)."""

    reason: str
    rule: str
    start: int | None = None


@dataclass
class Policy:
    """Compiled rules and hooks (see the module docstring); :meth:`check` applies them."""

    rules: list[tuple[str, list[re.Pattern], set[str]]] = field(default_factory=list)
    hooks: list[tuple[str, Callable, set[str]]] = field(default_factory=list)
    log_text: bool = False
    stream_hold: int = 64
    context: int = 200

    @property
    def checks_outputs(self) -> bool:
        """Does any rule or hook apply to outputs?"""
        return any("output" in a for *_, a in self.rules) or any("output" in a for *_, a in self.hooks)

    def check(self, text: str, where: str) -> Refusal | None:
        """The first rule or hook that refuses ``text`` as a ``where`` ("prompt" or "output"), or None."""
        for i, (reason, patterns, applies) in enumerate(self.rules):
            if where not in applies:
                continue
            starts = [m.start() for m in (p.search(text) for p in patterns) if m is not None]
            if starts:
                return self._refused(Refusal(reason, f"rule {i + 1}", min(starts)), text, where)
        for name, call, applies in self.hooks:
            if where not in applies:
                continue
            try:
                reason = call(text, where)
            except Exception as e:  # noqa: BLE001 - a broken classifier refuses (fails closed)
                log.error("policy hook %s raised %s: %s; refusing", name, type(e).__name__, e)
                return self._refused(Refusal("policy_error", name), text, where)
            if reason:
                reason = reason if isinstance(reason, str) and _REASON.fullmatch(reason) else "hook_refused"
                return self._refused(Refusal(reason, name), text, where)
        return None

    def _refused(self, r: Refusal, text: str, where: str) -> Refusal:
        log.warning("refused %s by %s (reason %s)%s", where, r.rule, r.reason,
                    f": {text!r}" if self.log_text else "")
        return r


def _applies(raw, where: str) -> set[str]:
    applies = raw.get("applies_to", list(WHERE))
    if not isinstance(applies, list) or not applies or any(a not in WHERE for a in applies):
        raise AigcError(f"{where}: applies_to = {applies!r}: expected a list of {' and '.join(WHERE)}")
    return set(applies)


def _int(raw: dict, key: str, default: int, top: int, where: Path) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise AigcError(f"{where}: {key} = {value!r}: expected an integer from 0 to {top}")
    return value


def _tables(raw: dict, key: str, path: Path) -> list[dict]:
    items = raw.get(key, [])
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise AigcError(f"{path}: {key}: expected [[{key}]] tables (double brackets)")
    return items


def _rule(rule: dict, where: str) -> tuple[str, list[re.Pattern], set[str]]:
    extra = sorted(set(rule) - {"reason", "patterns", "applies_to"})
    if extra:
        raise AigcError(f"{where}: unknown key {extra[0]!r} (a rule has reason, patterns and applies_to)")
    reason, patterns = rule.get("reason"), rule.get("patterns")
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        raise AigcError(f"{where}: reason = {reason!r}: expected a code of 1-64 letters, digits, _ . or -")
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise AigcError(f"{where}: patterns: expected a list of regular expressions")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise AigcError(f"{where}: pattern {p!r} is not a valid regular expression ({e})") from None
        if compiled[-1].search(""):
            raise AigcError(f"{where}: pattern {p!r} matches the empty text: it would refuse everything")
    return reason, compiled, _applies(rule, where)


def _hook(hook: dict, where: str) -> tuple[str, Callable, set[str]]:
    extra = sorted(set(hook) - {"call", "applies_to"})
    if extra:
        raise AigcError(f"{where}: unknown key {extra[0]!r} (a hook has call and applies_to)")
    call = hook.get("call")
    if not isinstance(call, str) or not re.fullmatch(r"[\w.]+:\w+", call):
        raise AigcError(f"{where}: call = {call!r}: expected 'module:function'")
    module, _, name = call.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error
        raise AigcError(f"{where}: cannot import {call} ({type(e).__name__}: {e})") from None
    if not callable(fn) or inspect.iscoroutinefunction(fn):
        raise AigcError(f"{where}: {call} is not a plain function (text, where) -> reason or None")
    return call, fn, _applies(hook, where)


def load_policy(path: str | Path) -> Policy:
    """Read and compile a policy file.

    Raises:
        AigcError: not TOML, an unknown key, a rule without patterns or reason, a pattern that is not a
            valid regular expression (named with its rule and the regex error) or matches the empty text,
            or a hook that cannot be imported or is not a plain function.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AigcError(f"{path}: cannot read the policy file ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise AigcError(f"{path}: not a TOML policy file ({e})") from None
    unknown = sorted(set(raw) - {"rule", "hook", "log_text", "stream_hold", "context"})
    if unknown:
        raise AigcError(f"{path}: unknown key {unknown[0]!r} (a policy has rule, hook, log_text, stream_hold and "
                        "context)")
    if not isinstance(raw.get("log_text", False), bool):
        raise AigcError(f"{path}: log_text = {raw['log_text']!r}: expected true or false")
    policy = Policy(log_text=raw.get("log_text", False), stream_hold=_int(raw, "stream_hold", 64, 4096, path),
                    context=_int(raw, "context", 200, 4096, path))
    policy.rules = [_rule(r, f"{path}: rule {i + 1}") for i, r in enumerate(_tables(raw, "rule", path))]
    policy.hooks = [_hook(h, f"{path}: hook {i + 1}") for i, h in enumerate(_tables(raw, "hook", path))]
    if not policy.rules and not policy.hooks:
        raise AigcError(f"{path}: no [[rule]] or [[hook]]: the policy would refuse nothing")
    return policy


class OutputFilter:
    """The content policy over one request's outputs as they grow: what each choice may send now.

    Args:
        policy: the policy (its output rules and hooks).
        contexts: per choice, the end of its prompt, checked together with the output.
    """

    def __init__(self, policy: Policy, contexts: list[str]):
        self.policy = policy
        self.context = [c[-policy.context:] if policy.context else "" for c in contexts]
        self.text = [""] * len(contexts)  # everything generated so far
        self.sent = [0] * len(contexts)  # characters of it released

    def feed(self, c: int, piece: str, final: bool) -> tuple[str, Refusal | None]:
        """Add ``piece`` to choice ``c``; return the text it may release now and the refusal, if any (the
        output is then cut where the match starts, or before this piece for a hook)."""
        before = len(self.text[c])
        self.text[c] += piece
        ctx = self.context[c]
        refusal = self.policy.check(ctx + self.text[c], "output") if piece else None
        if refusal is not None:
            cut = before if refusal.start is None else max(refusal.start - len(ctx), 0)
            self.text[c] = self.text[c][:cut]
            final = True
        end = len(self.text[c]) if final else max(len(self.text[c]) - self.policy.stream_hold, self.sent[c])
        out, self.sent[c] = self.text[c][self.sent[c]:end], max(end, self.sent[c])
        return out, refusal


