"""Chat templates: how a list of messages becomes one prompt string.

A chat model's folder carries its template the way Hugging Face tools expect it:
``tokenizer_config.json`` with ``"chat_template"`` (a Jinja template over
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``) and
``"eos_token"``, the text that ends an assistant turn. Templates are rendered in
Jinja's immutable sandbox (templates are data and may come from anyone), as
``transformers`` does, so a folder renders the same here and there.

Messages are dicts ``{"role": "system" | "user" | "assistant", "content": str}``
(OpenAI's ``developer`` role is read as ``system``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aigc.atomic import write_json
from aigc.errors import AigcError

ROLES = ("system", "user", "assistant")


@dataclass
class ChatTemplate:
    """A Jinja chat template and the string that ends an assistant turn (may be None)."""

    template: str
    eos_token: str | None = None
    bos_token: str | None = None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (checked by :func:`check_messages`).

        Raises:
            AigcError: a malformed message, or a template that fails (its own
                ``raise_exception`` message or Jinja's error, in one line).
        """
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        messages = check_messages(messages)

        def raise_exception(message):
            raise AigcError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except AigcError:
            raise
        except jinja2.TemplateError as e:
            raise AigcError(f"chat template failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def check_messages(messages, where: str = "messages") -> list[dict]:
    """Validate chat messages; returns them as plain ``{"role", "content"}`` dicts.

    ``content`` may be a string or OpenAI's list of ``{"type": "text", "text": ...}`` parts
    (joined). Raises :class:`AigcError` naming the message index and field.
    """
    if not isinstance(messages, list) or not messages:
        raise AigcError(f"{where}: expected a non-empty list of {{\"role\", \"content\"}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise AigcError(f"{where}[{i}]: expected an object with role and content")
        role = m.get("role")
        role = "system" if role == "developer" else role
        if role not in ROLES:
            raise AigcError(f"{where}[{i}].role = {m.get('role')!r}: expected one of {', '.join(ROLES)}")
        if m.get("tool_calls") or m.get("function_call") or role == "tool":
            raise AigcError(f"{where}[{i}]: tool and function calls are not supported")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise AigcError(f"{where}[{i}].content[{j}]: only {{\"type\": \"text\", \"text\": ...}} "
                                    "parts are supported")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise AigcError(f"{where}[{i}].content: expected a string")
        out.append({"role": role, "content": content})
    return out


def load_chat_template(folder: str | Path) -> ChatTemplate | None:
    """The chat template of a model folder, or None when it has none (not a chat model).

    Raises:
        AigcError: a tokenizer_config.json that is not JSON, or whose fields have the wrong type.
    """
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AigcError(f"{path}: not valid JSON") from None
    template = raw.get("chat_template") if isinstance(raw, dict) else None
    if template is None:
        return None
    if isinstance(template, list):  # several named templates (transformers' layout): take "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str):
        raise AigcError(f"{path}: chat_template must be a Jinja template string")

    def token(key):
        value = raw.get(key)
        if isinstance(value, dict):  # transformers' AddedToken layout
            value = value.get("content")
        if value is not None and not isinstance(value, str):
            raise AigcError(f"{path}: {key} must be a string")
        return value

    return ChatTemplate(template, token("eos_token"), token("bos_token"))


def save_chat_template(folder: str | Path, chat: ChatTemplate) -> None:
    """Write (or update) tokenizer_config.json in ``folder`` with the template and its tokens."""
    path = Path(folder) / "tokenizer_config.json"
    raw = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AigcError(f"{path}: not valid JSON") from None
    raw["chat_template"] = chat.template
    for key in ("eos_token", "bos_token"):
        if getattr(chat, key) is not None:
            raw[key] = getattr(chat, key)
    write_json(path, raw)
