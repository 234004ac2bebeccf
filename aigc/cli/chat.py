"""`aigc chat MODEL`: a conversation in the terminal, one user turn per line of stdin."""

from __future__ import annotations

import argparse
import sys

from aigc.api import load
from aigc.cli.common import add_runtime_flags, add_sampling_flags, check_seed, no_overrides, sampling_overrides, threads
from aigc.config import SampleConfig
from aigc.generate.poem import poems_for_instruction
from aigc.errors import AigcError
from aigc.folders import folder_kind
from aigc.generate.images import ImageModel
from aigc.generate.text import TextModel

CHAT_COMMANDS = ("/reset starts a new conversation (the system prompt stays), /system TEXT sets the system prompt "
            "(/system alone removes it), /exit quits")
CHAT = ("A conversation with a chat model (a folder whose tokenizer_config.json has a chat_template, e.g. one "
        "fine-tuned with data.format = \"chat\"). Each line of stdin is a user turn; the reply streams as it is "
        "generated and the history is kept (from a pipe, each turn is printed as '> LINE', the reply, a blank "
        "line). " + CHAT_COMMANDS + "; end of input quits too. Unset parameters come from "
        "the model's generation_config.json.")


def chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run folder (its latest checkpoint) or a model folder")
    p.add_argument("--system", help="the system prompt (default: none)")
    add_sampling_flags(p, prompt=False, max_tokens_alias=True)
    p.add_argument("--seed", type=int, help="random seed: reply i of a conversation uses seed + i (/reset starts "
                   "a new conversation), so a conversation replays the same")
    add_runtime_flags(p, compile_flag=True)


def run_chat(args, overrides: list[str]) -> int:
    """The reply streams token by token and ends at the template's end-of-turn token; the
    history is kept (its oldest turns dropped when the prompt would not fit the context).
    Interactive (a terminal), a failing turn is reported and the session goes on, and
    Ctrl-C stops the reply; with stdin a pipe, either ends the command (exit status 2, 130).
    """
    no_overrides("chat", overrides)
    threads(args.threads)
    check_seed(args.seed)
    model = load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    if isinstance(model, ImageModel):
        raise AigcError(f"{args.model}: a {model.family!r} image model; chat needs a text model with a chat template")
    if model.chat is None:
        raise AigcError(f"{model.folder}: not a chat model (no chat_template in its tokenizer_config.json); fine-tune "
                        "one on conversations (data.format = \"chat\") or use `aigc sample`")
    settings = model.turn_end(model.settings(**sampling_overrides(args)))  # a bad flag fails before the first turn
    if not model.chat.trained and folder_kind(model.folder) != "hf":
        print(f"note: {model.folder.name} has a chat template but was never trained on conversations; its replies "
              "continue the text (fine-tune it with data.format = \"chat\" for a chat model)", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 reach the prompt check, which names them
        sys.stdin.reconfigure(errors="surrogateescape")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {model.folder} ({CHAT_COMMANDS}; Ctrl-D quits)", file=sys.stderr)
    system, history, turn = args.system, [], 0
    while True:
        line = _read_line(interactive)
        if line is None:
            break
        if not line.strip():
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                history, turn = [], 0
                print("(conversation cleared)", file=sys.stderr)
            elif command == "/system":
                system = rest.strip() or None
                print("(system prompt set)" if system else "(system prompt removed)", file=sys.stderr)
            else:
                print(f"unknown command {command!r}: {CHAT_COMMANDS}", file=sys.stderr)
            continue
        user = {"role": "user", "content": line}
        if not interactive:  # a pipe: mark each turn, as the terminal shows it (the reply follows, then a blank line)
            print(f"> {line}", flush=True)
        reply = _reply(model, settings, system, history, user, None if args.seed is None else args.seed + turn,
                       interactive)
        if reply is not None:
            history += [user, {"role": "assistant", "content": reply}]
            turn += 1
    return 0


def _read_line(interactive: bool) -> str | None:
    """The next user line without its line end; None at the end of input."""
    if interactive:
        try:
            return input("> ").rstrip("\r\n")
        except EOFError:
            print(file=sys.stderr)
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


def _reply(model: TextModel, settings: SampleConfig, system: str | None, history: list[dict], user: dict,
           seed: int | None, interactive: bool) -> str | None:
    """Stream one reply to stdout; return its text, or None when it failed or was interrupted
    (interactive only: with a pipe the error ends the command)."""
    try:
        poems = poems_for_instruction(model, user["content"], 1, seed)  # 写一首关于秋天的七言绝句: the form is kept
        if poems is not None:
            v = poems[0]["verdict"]
            print(poems[0]["text"], end="", flush=True)
            print(f"\n[{'keeps the rules' if v.ok else '; '.join(v.problems)}: {v.template}, rhyme {v.group}]",
                  file=sys.stderr)
            print("" if interactive else "\n", flush=True)
            return poems[0]["text"]
        text = _chat_prompt(model, system, history, user, settings.max_new_tokens)
        reply = ""
        for piece in model.stream(text, seed=seed, settings=settings, token_healing=False):
            print(piece, end="", flush=True)
            reply += piece
    except AigcError as e:
        if not interactive:
            raise
        print(f"\nerror: {e}", file=sys.stderr)
        return None
    except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session (a pipe: the command)
        if not interactive:
            raise
        print("\n(reply interrupted; not kept in the conversation)", file=sys.stderr)
        return None
    print("" if interactive else "\n", flush=True)
    return reply


def _chat_prompt(model: TextModel, system: str | None, history: list[dict], user: dict, max_new: int) -> str:
    """The prompt for the next turn; the oldest turns of ``history`` are dropped (in place, with a
    note on stderr) while it would not leave room in the model's context for the reply
    (``max_new`` tokens, or a quarter of the context when that is less: a longer reply slides
    the context as :class:`~aigc.generate.engine.Engine` does)."""
    while True:
        messages = ([{"role": "system", "content": system}] if system else []) + history + [user]
        text = model.render_chat(messages)
        limit = model.model.context_length
        if not history or limit is None or len(model.tokenizer.encode(text)) + 1 + min(max_new, limit // 4) <= limit:
            return text
        del history[:2]
        print("(dropped the oldest turn to fit the model's context)", file=sys.stderr)
