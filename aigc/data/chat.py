"""Chat templates: how a list of messages becomes one prompt string.

A chat model's folder carries its template the way Hugging Face tools expect it:
``tokenizer_config.json`` with ``"chat_template"`` (a Jinja template over
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``) and
``"eos_token"``, the text that ends an assistant turn. Templates are rendered in
Jinja's immutable sandbox (templates are data and may come from anyone), as
``transformers`` does, so a folder renders the same here and there.

Messages are dicts ``{"role": "system" | "user" | "assistant", "content": str}``
(OpenAI's ``developer`` role is read as ``system``).

Chat fine-tuning data (``data.format = "chat"``) is a JSONL file of conversations,
``{"messages": [...]}`` per line (:func:`read_conversations`). Each is rendered with the
template and the characters of its assistant turns are found by rendering it turn by
turn (:func:`render_with_targets`): the text an assistant turn adds after the generation
prompt is what the model learns to write; everything else is context.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from aigc.atomic import read_json, write_json
from aigc.config import DataConfig
from aigc.data.sources import decode_text, json_lines, read_bytes
from aigc.errors import AigcError

ROLES = ("system", "user", "assistant")

# ChatML (OpenAI; Qwen's layout): every turn is <|im_start|>role\ncontent<|im_end|>\n.
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
BUILTIN_TEMPLATES = {"chatml": (CHATML, CHATML_END)}  # name -> (template, eos_token)


def _raise_exception(message):
    raise AigcError(f"chat template: {message}")


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    """The Jinja template object of ``template``, compiled once (rendering a dataset calls it often)."""
    # as transformers renders templates: loop controls ({% break %}), raise_exception, strftime_now
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


CHAT_TRAINED = "aigc_chat_trained"  # tokenizer_config.json: the model was trained on chats in its template


@dataclass
class ChatTemplate:
    """A Jinja chat template and the string that ends an assistant turn (may be None).

    ``trained``: the model was trained on conversations in this template (``aigc_chat_trained`` in
    tokenizer_config.json, written by a chat fine-tuning run); a template alone (tang-base's
    ChatML, never chat-trained) only says how a conversation would be written.
    """

    template: str
    eos_token: str | None = None
    bos_token: str | None = None
    trained: bool = False

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (checked by :func:`check_messages`).

        Raises:
            AigcError: a malformed message, or a template that fails (its own
                ``raise_exception`` message or Jinja's error, in one line).
        """
        messages = check_messages(messages)
        try:
            return _compile(self.template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None,
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
    raw = read_json(path)
    return chat_template_from_config(raw if isinstance(raw, dict) else {}, path)


def chat_template_from_config(raw: dict, path: str | Path = "tokenizer_config.json") -> ChatTemplate | None:
    """The chat template held by a ``tokenizer_config.json`` dict (e.g. ``Tokenizer.config``), or None.

    Raises:
        AigcError: fields of the wrong type, naming ``path``.
    """
    template = raw.get("chat_template")
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

    return ChatTemplate(template, token("eos_token"), token("bos_token"), raw.get(CHAT_TRAINED) is True)


def save_chat_template(folder: str | Path, chat: ChatTemplate) -> None:
    """Write (or update) tokenizer_config.json in ``folder`` with the template and its tokens."""
    path = Path(folder) / "tokenizer_config.json"
    raw = {}
    if path.is_file():
        raw = read_json(path, dict)
    raw["chat_template"] = chat.template
    for key in ("eos_token", "bos_token"):
        if getattr(chat, key) is not None:
            raw[key] = getattr(chat, key)
    if chat.trained:
        raw[CHAT_TRAINED] = True
    write_json(path, raw)


# ---------------------------------------------------------------- chat fine-tuning data
def read_conversations(text: str, name: str) -> list[tuple[int, list[dict]]]:
    """The conversations of a chat JSONL text, one ``{"messages": [...]}`` per line.

    Returns ``(line number, messages)`` pairs, the messages as plain ``{"role", "content"}``
    dicts (``developer`` read as ``system``).

    Raises:
        AigcError: naming ``name:line``: invalid JSON, no ``messages`` list, an unknown role,
            content that is not a string, a conversation that opens with or lacks an
            assistant turn; or a file without conversations.
    """
    out = []
    for lineno, obj in json_lines(text, name):
        where = f"{name}:{lineno}"
        raw = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(raw, list):
            raise AigcError(f'{where}: no "messages" list (a chat file holds one {{"messages": [{{"role": ..., '
                            '"content": ...}}, ...]}} per line)')
        messages = check_messages(raw, f"{where}: messages")
        for i, m in enumerate(raw):
            content = m.get("content")
            if not isinstance(content, str):
                raise AigcError(f"{where}: messages[{i}].content is {type(content).__name__}, expected a string")
            try:
                content.encode("utf-8")
            except UnicodeEncodeError:
                raise AigcError(f"{where}: messages[{i}].content holds a lone surrogate escape, not valid text") from None
        roles = [m["role"] for m in messages]
        if "assistant" not in roles:
            raise AigcError(f"{where}: no assistant turn (nothing to learn from this conversation)")
        if roles[0] == "assistant":
            raise AigcError(f"{where}: messages[0] is an assistant turn; a conversation opens with a system or "
                            "user turn")
        out.append((lineno, messages))
    if not out:
        raise AigcError(f"{name}: no conversations (expected one {{\"messages\": [...]}} per line)")
    return out


def render_with_targets(chat: ChatTemplate, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the character spans ``[start, end)`` of its assistant turns.

    An assistant turn i is what ``render(messages[:i+1])`` adds after
    ``render(messages[:i], add_generation_prompt=True)``: its content and the end-of-turn
    token, cut just after the last ``eos_token`` in it (a newline the template writes
    after the turn is layout, not something the model must say). The first message must
    not be an assistant turn.

    Raises:
        AigcError: a template that is not incremental (a longer conversation does not
            start with the rendering of a shorter one), or one that fails.
    """
    full = chat.render(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = chat.render(messages[:i], add_generation_prompt=True)
        upto = full if i == len(messages) - 1 else chat.render(messages[:i + 1], add_generation_prompt=False)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise AigcError(f"the chat template is not incremental at messages[{i}] (the conversation up to this "
                            "turn does not begin with its generation prompt, or the whole does not begin with it), "
                            "so the assistant's tokens cannot be told apart; use data.chat_template = \"chatml\"")
        start, end = len(prefix), len(upto)
        if chat.eos_token and chat.eos_token in full[start:end]:
            end = full.rindex(chat.eos_token, start, end) + len(chat.eos_token)
        spans.append((start, end))
    return full, spans


def read_chat_source(cfg: DataConfig) -> list[tuple[int, list[dict]]]:
    """The conversations of ``data.source`` as ``(line number, messages)`` pairs
    (see :func:`aigc.data.chat.read_conversations`).

    Raises:
        AigcError: a missing or unreadable file, or a bad line (named ``file:line``).
    """
    path = Path(cfg.source)
    if not path.is_file():
        raise AigcError(f"{path}: no such file (chat data is one .jsonl file of conversations)")
    return read_conversations(decode_text(read_bytes(path), str(path)), str(path))
