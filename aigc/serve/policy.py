"""A content policy for the server (``aigc serve --policy POLICY.toml``): prompts and outputs checked
against patterns and optional classifier hooks.

A refused prompt is answered 400 in OpenAI's error shape with ``code: "content_policy_violation"``
and the rule's reason code in the message and in ``param``-free ``reason``; an output that matches
is cut before the matching piece with ``finish_reason: "content_filter"`` (as OpenAI does), in a
stream too. Each refusal is counted in ``/metrics`` (``aigc_policy_refusals_total`` by where and
reason) and logged on the ``aigc.policy`` logger by rule and reason, without the text unless the
file says ``log_text = true``.

The file::

    log_text = false                     # optional: log the refused text too

    [[rule]]
    reason = "violence"                  # the reason code clients see (letters, digits, _ . -)
    patterns = ['(?i)\\bkill (him|her|them)\\b', 'how to make a bomb']   # Python regular expressions
    applies_to = ["prompt", "output"]    # optional, default both

    [[hook]]
    call = "mypackage.moderation:check"  # a function (text, where) -> None or a reason code
    applies_to = ["output"]

A hook that raises refuses the text (reason ``policy_error``): a policy fails closed.
"""

from __future__ import annotations

import importlib
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aigc.errors import AigcError

WHERE = ("prompt", "output")
_REASON = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
log = logging.getLogger("aigc.policy")


@dataclass
class Refusal:
    """Why a text was refused: the rule's ``reason`` code and which rule (``rule``: "rule 2" or the hook)."""

    reason: str
    rule: str


@dataclass
class Policy:
    """Compiled rules and hooks (see the module docstring); :meth:`check` applies them."""

    rules: list[tuple[str, list[re.Pattern], set[str]]] = field(default_factory=list)
    hooks: list[tuple[str, Callable, set[str]]] = field(default_factory=list)
    log_text: bool = False

    def check(self, text: str, where: str) -> Refusal | None:
        """The first rule or hook that refuses ``text`` as a ``where`` ("prompt" or "output"), or None."""
        for i, (reason, patterns, applies) in enumerate(self.rules):
            if where in applies and any(p.search(text) for p in patterns):
                return self._refused(Refusal(reason, f"rule {i + 1}"), text, where)
        for name, call, applies in self.hooks:
            if where not in applies:
                continue
            try:
                reason = call(text, where)
            except Exception as e:  # noqa: BLE001 - a broken classifier refuses (fails closed)
                log.error("policy hook %s raised %s: %s; refusing", name, type(e).__name__, e)
                return self._refused(Refusal("policy_error", name), text, where)
            if reason:
                return self._refused(Refusal(str(reason)[:64], name), text, where)
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


def load_policy(path: str | Path) -> Policy:
    """Read and compile a policy file.

    Raises:
        AigcError: not TOML, an unknown key, a rule without patterns or reason, a pattern that is not a
            valid regular expression (named with its rule and the regex error), or a hook that cannot be imported.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AigcError(f"{path}: cannot read the policy file ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise AigcError(f"{path}: not a TOML policy file ({e})") from None
    unknown = sorted(set(raw) - {"rule", "hook", "log_text"})
    if unknown:
        raise AigcError(f"{path}: unknown key {unknown[0]!r} (a policy has rule, hook and log_text)")
    if not isinstance(raw.get("log_text", False), bool):
        raise AigcError(f"{path}: log_text = {raw['log_text']!r}: expected true or false")
    policy = Policy(log_text=raw.get("log_text", False))
    for i, rule in enumerate(raw.get("rule", [])):
        where = f"{path}: rule {i + 1}"
        if not isinstance(rule, dict) or sorted(set(rule) - {"reason", "patterns", "applies_to"}):
            raise AigcError(f"{where}: expected the keys reason, patterns and applies_to")
        reason, patterns = rule.get("reason"), rule.get("patterns")
        if not isinstance(reason, str) or not _REASON.match(reason):
            raise AigcError(f"{where}: reason = {reason!r}: expected a code of 1-64 letters, digits, _ . or -")
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise AigcError(f"{where}: patterns: expected a list of regular expressions")
        compiled = []
        for p in patterns:
            try:
                compiled.append(re.compile(p))
            except re.error as e:
                raise AigcError(f"{where}: pattern {p!r} is not a valid regular expression ({e})") from None
        policy.rules.append((reason, compiled, _applies(rule, where)))
    for i, hook in enumerate(raw.get("hook", [])):
        where = f"{path}: hook {i + 1}"
        call = hook.get("call") if isinstance(hook, dict) else None
        if not isinstance(call, str) or ":" not in call:
            raise AigcError(f"{where}: call = {call!r}: expected 'module:function'")
        module, _, name = call.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise AigcError(f"{where}: cannot import {call} ({e})") from None
        if not callable(fn):
            raise AigcError(f"{where}: {call} is not a function")
        policy.hooks.append((call, fn, _applies(hook, where)))
    if not policy.rules and not policy.hooks:
        raise AigcError(f"{path}: no [[rule]] or [[hook]]: the policy would refuse nothing")
    return policy
