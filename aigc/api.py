"""The Python API: ``aigc.load(path)`` -> a model you can ``.generate(...)`` with.

>>> import aigc
>>> model = aigc.load("runs/tang-poems-gpt")          # a run folder or a model folder
>>> model.generate("明月", n=2, max_new_tokens=64, seed=0)
['明月...', '明月...']
>>> for piece in model.stream("春风", seed=1):        # text as it is produced
...     print(piece, end="", flush=True)

>>> gan = aigc.load("runs/fashion-dcgan")              # an image model -> ImageModel
>>> images = gan.generate(16, label="Sneaker", seed=0)  # (16, 1, 28, 28) float32 in [-1, 1]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from aigc.config import SampleConfig, build_dataclass
from aigc.data.chat import ChatTemplate, load_chat_template
from aigc.data.tokenizer import Tokenizer
from aigc.errors import AigcError
from aigc.generate.engine import BatchEngine, Engine
from aigc.generate.sampling import SamplingParams
from aigc.models import TEXT_FAMILIES, load_model_folder
from aigc.models.hf import is_hf_folder


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device.

    Raises:
        AigcError: a CUDA device asked for on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise AigcError(f"device = {name!r}: expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AigcError(f"device = {name!r} but no CUDA device is available (use 'auto' or 'cpu')")
    try:
        return torch.device(name)
    except RuntimeError:
        raise AigcError(f"device = {name!r}: expected auto, cpu, cuda or cuda:N") from None


def set_threads(n: int = 0, what: str = "threads") -> None:
    """Use ``n`` CPU threads for torch (0 = every core this process may use).

    Raises:
        AigcError: ``n`` negative or more than the machine's cores (``what`` names the setting).
    """
    cores = os.cpu_count() or 1
    if not 0 <= n <= cores:
        raise AigcError(f"{what} = {n}: expected 0 (all cores) up to this machine's {cores} cores")
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    torch.set_num_threads(n or avail)


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder itself (aigc's or a Hugging Face one), the latest checkpoint of a run
    folder, or a model shipped with aigc by name (``tang-base``).

    Raises:
        AigcError: the path does not exist (a hub name gets a message to download it first),
            or holds neither a model nor a checkpoint.
    """
    from aigc.models import BUILTIN_MODELS
    from aigc.models.hf import refuse_hub_name
    from aigc.train.checkpoint import latest_checkpoint

    if not Path(path).exists() and str(path) in BUILTIN_MODELS:
        if not (BUILTIN_MODELS[str(path)] / "model.safetensors").is_file():
            raise AigcError(f"{path}: the shipped model is missing from this installation; build it with "
                            "scripts/build_tang_base.py")
        return BUILTIN_MODELS[str(path)]
    refuse_hub_name(path)
    path = Path(path)
    if not path.exists():
        raise AigcError(f"{path}: no such run or model folder")
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    if (path / "checkpoints").is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise AigcError(f"{path}: run folder has no complete checkpoint yet")
        return ckpt
    raise AigcError(f"{path}: neither a model folder (config.json) nor a run folder (checkpoints/)")


@dataclasses.dataclass
class GenerationStep:
    """What one decoding step produced for each of the ``n`` samples of a request.

    Attributes:
        pieces: new text of each sample ("" when a sample produced nothing printable yet or has ended).
        finish: None while a sample runs, then "stop" (stop string or stop token) or "length".
        tokens: tokens generated so far by each sample (stop tokens not counted).
    """

    pieces: list[str]
    finish: list[str | None]
    tokens: list[int]


class TextModel:
    """A loaded text model with its tokenizer and default generation parameters.

    Attributes:
        model: the ``nn.Module`` (``gpt`` or ``lstm``) in eval mode.
        tokenizer: its :class:`~aigc.data.tokenizer.Tokenizer`.
        defaults: :class:`~aigc.config.SampleConfig` read from generation_config.json.
        folder: the model folder it was loaded from.
        chat: its :class:`~aigc.data.chat.ChatTemplate` (tokenizer_config.json), None if not a chat model.
    """

    def __init__(self, model, tokenizer: Tokenizer, defaults: SampleConfig, folder: Path,
                 chat: ChatTemplate | None = None):
        self.model, self.tokenizer, self.defaults, self.folder = model, tokenizer, defaults, folder
        self.chat = chat
        self.engine = Engine(model)
        self.batch: BatchEngine | None = None  # continuous batching, set up by a server
        self._heal_cache: dict[str, torch.Tensor] = {}

    def chat_prompt(self, messages: list[dict]) -> tuple[str, dict]:
        """The prompt for a conversation, and the settings that end the assistant's turn.

        Returns ``(text, {"stop_ids": [...], "stop": [...]})``: the template's end-of-turn
        token stops generation as a token when the vocabulary has it, else as a stop string.

        Raises:
            AigcError: not a chat model, or bad messages (see :func:`aigc.data.chat.check_messages`).
        """
        if self.chat is None:
            raise AigcError(f"{self.folder.name} is not a chat model (its folder has no chat_template in "
                            "tokenizer_config.json); use plain completions")
        text = self.chat.render(messages)
        ends: dict = {"stop_ids": [], "stop": []}
        eos = self.chat.eos_token
        if eos:
            eos_id = self.tokenizer.tk.token_to_id(eos)
            ends["stop_ids" if eos_id is not None else "stop"].append(eos_id if eos_id is not None else eos)
        return text, ends

    @property
    def family(self) -> str:
        return self.model.family

    def _settings(self, overrides: dict) -> SampleConfig:
        given = {k: v for k, v in overrides.items() if v is not None}
        cfg = dataclasses.replace(self.defaults, **given)
        cfg.validate()
        return cfg

    def prompt_ids(self, prompt: str, max_new_tokens: int) -> list[int]:
        """The document-start token (``<|endoftext|>``, or a Llama vocabulary's ``<s>``) + the prompt's
        ids, cropped from the left to fit the context (with a warning).

        Raises:
            AigcError: a character the tokenizer cannot encode.
        """
        ids = [self.tokenizer.bos_id] + self.tokenizer.encode(prompt, "prompt")
        limit = self.model.context_length
        if limit is not None and len(ids) > limit - 1:
            warnings.warn(f"prompt of {len(ids)} tokens is longer than the context ({limit}); "
                          f"keeping its last {limit - 1} tokens", stacklevel=3)
            ids = ids[-(limit - 1):]
        return ids

    def steps(self, ids: list[int], n: int = 1, seed: int | None = None, batched: bool = False,
              **settings) -> Iterator["GenerationStep"]:
        """Generate ``n`` samples after the prompt token ids ``ids``; yield one :class:`GenerationStep` per token.

        Settings (each defaults to generation_config.json): max_new_tokens, temperature,
        top_k, top_p, repetition_penalty, stop (list of strings), stop_at_document_end,
        plus presence_penalty and frequency_penalty; ``stop_ids`` (token ids that end a
        sample like the document-boundary token). A sample ends at a stop string (not
        included), at the document-boundary token, or after max_new_tokens.

        ``batched``: decode inside :attr:`batch` (a :class:`~aigc.generate.engine.BatchEngine`
        shared with other requests; its owner calls ``step()`` between ``next`` calls).
        ``healed``: token healing (Microsoft Guidance's name for it): the text cut from the end of
        the prompt; the first token must start with it, and it is not part of the output.

        Raises:
            AigcError: a setting out of range.
            RowsFull: ``batched`` and the batch engine has no room now (at the first ``next``).
        """
        presence = settings.pop("presence_penalty", 0.0) or 0.0
        frequency = settings.pop("frequency_penalty", 0.0) or 0.0
        stop_ids = set(settings.pop("stop_ids", None) or ())
        line_start = settings.pop("at_line_start", False)
        healed = settings.pop("healed", "")  # text the first token must start with; not shown
        cfg = self._settings(settings)
        if cfg.stop_at_document_end:
            stop_ids.add(self.tokenizer.eot_id)
        params = SamplingParams(cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty, presence, frequency)
        tokens = [[] for _ in range(n)]
        emitted = [0] * n  # characters of each sample already yielded
        finish: list[str | None] = [None] * n
        hold = max((len(s) for s in cfg.stop), default=1) - 1  # text that could still start a stop string
        if cfg.code_stops:
            hold = max(hold, 1)  # a final newline may turn out to be a dedent
        allowed = self._tokens_starting_with(healed) if healed else None
        if batched:
            steps = self.batch.add(ids, n, params, seed, allowed)
        else:
            steps = self.engine.generate(ids, n, cfg.max_new_tokens, params, seed, allowed)
        drop = len(healed)
        try:
            for step, nxt in enumerate(steps):
                pieces = [""] * n
                for i, tok in enumerate(nxt.tolist()):
                    if finish[i]:
                        continue
                    if tok in stop_ids:
                        finish[i] = "stop"
                        text = self.tokenizer.decode(tokens[i])[drop:]
                    else:
                        tokens[i].append(tok)
                        text = self.tokenizer.decode(tokens[i])[drop:]
                        cut = min((text.find(s) for s in cfg.stop if s in text), default=-1)
                        if cfg.code_stops:
                            end = code_end(text, line_start)
                            if end >= 0 and (cut < 0 or end < cut):
                                cut = end
                        if cut >= 0:
                            text, finish[i] = text[:cut], "stop"
                        elif step == cfg.max_new_tokens - 1:
                            finish[i] = "length"
                    if finish[i]:
                        safe = len(text)
                    else:
                        safe = len(text) - hold
                        while safe > emitted[i] and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 sequence
                            safe -= 1
                    if safe > emitted[i]:
                        pieces[i] = text[emitted[i]:safe]
                        emitted[i] = safe
                yield GenerationStep(pieces, list(finish), [len(t) for t in tokens])
                if all(finish):
                    break
        finally:
            steps.close()

    def stream_batch(self, prompt: str, n: int = 1, seed: int | None = None, suffix: str | None = None,
                     **settings) -> Iterator[list[str]]:
        """Generate ``n`` samples together; yield, per step, the new text of each sample.

        With ``suffix``, fill in the middle between ``prompt`` and ``suffix`` (a model trained
        with FIM). See :meth:`steps` for the settings; ``code_stops`` ends a sample where a line
        starts at column 0. With a BPE tokenizer and ``token_healing`` (default on), a prompt's
        trailing whitespace is cut and the first token must start with it: a prompt ending in
        "\n" otherwise forces a token boundary the model rarely saw in training (byte-level BPE
        merges a newline with the indentation after it). Raises :class:`AigcError` on a prompt the tokenizer cannot encode
        or a setting out of range.
        """
        max_new = settings.get("max_new_tokens") or self.defaults.max_new_tokens
        settings.setdefault("at_line_start", prompt.endswith("\n") or not prompt)
        healed = ""
        if suffix is not None:
            ids = self.infill_ids(prompt, suffix)
        else:
            heal = settings.get("token_healing")
            if (self.defaults.token_healing if heal is None else heal) and self.tokenizer.kind == "bpe":
                healed = prompt[len(prompt.rstrip()):] if prompt.strip() else ""
                if healed and not self._tokens_starting_with(healed).any():
                    healed = ""
            ids = self.prompt_ids(prompt[:len(prompt) - len(healed)], max_new)
        settings["healed"] = healed
        for step in self.steps(ids, n, seed, **settings):
            yield step.pieces

    @functools.cached_property
    def token_texts(self) -> list[str]:
        """The text of every token id (special tokens included), decoded once."""
        return [self.tokenizer.tk.decode([i], skip_special_tokens=False) for i in range(self.tokenizer.vocab_size)]

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

    def infill_ids(self, prefix: str, suffix: str) -> list[int]:
        """The fill-in-the-middle prompt (PSM) for the text between ``prefix`` and ``suffix``, cropped to fit
        the context (the prefix from the left, the suffix from the right, with a warning).

        Raises:
            AigcError: a model trained without FIM tokens (``data.fim_rate = 0``).
        """
        from aigc.data.fim import fim_token_ids, infill_prompt

        ids = infill_prompt(self.tokenizer, prefix, suffix)
        limit = self.model.context_length
        if limit is not None and len(ids) > limit - 1:
            pre, mid, suf = fim_token_ids(self.tokenizer)
            p, s = self.tokenizer.encode(prefix), self.tokenizer.encode(suffix)
            room = limit - 1 - 4
            keep_s = min(len(s), room // 3)
            keep_p = room - keep_s
            warnings.warn(f"prefix + suffix of {len(p) + len(s)} tokens do not fit the context ({limit}); keeping "
                          f"the last {keep_p} tokens of the prefix and the first {keep_s} of the suffix", stacklevel=3)
            ids = [self.tokenizer.bos_id, pre] + p[len(p) - keep_p:] + [suf] + s[:keep_s] + [mid]
        return ids

    def stream(self, prompt: str, seed: int | None = None, **settings) -> Iterator[str]:
        """Generate one sample and yield its text piece by piece as tokens arrive (prompt not included)."""
        for pieces in self.stream_batch(prompt, 1, seed, **settings):
            if pieces[0]:
                yield pieces[0]

    def generate(self, prompt: str, n: int = 1, seed: int | None = None, include_prompt: bool = True,
                 **settings) -> list[str]:
        """``n`` samples continuing ``prompt``, each a string (with the prompt in front by default).

        See :meth:`stream_batch` for the settings. Raises :class:`AigcError` on a prompt the
        tokenizer cannot encode or a setting out of range.
        """
        texts = [""] * n
        for pieces in self.stream_batch(prompt, n, seed, **settings):
            texts = [t + p for t, p in zip(texts, pieces)]
        return [prompt + t if include_prompt else t for t in texts]


class ImageModel:
    """A loaded image model (``dcgan`` or ``vae``): sample grids, and for the VAE reconstruct and interpolate.

    Images are tensors ``(N, C, S, S)`` float32 in [-1, 1]; :func:`aigc.generate.images.save_grid`
    writes them as PNG.
    """

    def __init__(self, model, folder: Path):
        self.model, self.folder = model, folder
        self.device = next(model.parameters()).device

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def classes(self) -> list[str]:
        return list(self.model.config.classes) if self.model.config.conditional else []

    @property
    def step(self) -> int | None:
        """The training step of the checkpoint this model came from, when known."""
        try:
            return int(json.loads((self.folder / "state.json").read_text(encoding="utf-8"))["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def class_index(self, name: str | int) -> int:
        """A class name (case-insensitive) or index -> index.

        Raises:
            AigcError: an unconditional model, or an unknown class (listing the known ones).
        """
        if not self.classes:
            raise AigcError(f"{self.folder}: an unconditional model; --class needs a model trained with "
                            "model.conditional = true")
        if isinstance(name, int) or (isinstance(name, str) and name.isdigit() and name not in self.classes):
            i = int(name)
            if 0 <= i < len(self.classes):
                return i
        lowered = [c.lower() for c in self.classes]
        if isinstance(name, str) and name.lower() in lowered:
            return lowered.index(name.lower())
        raise AigcError(f"unknown class {name!r} (known: {', '.join(self.classes)})")

    def generate(self, n: int = 64, label: str | int | None = None, seed: int | None = None) -> torch.Tensor:
        """``n`` images of class ``label`` (conditional models: every class in turn when None).

        Raises:
            AigcError: ``n`` out of [1, 4096], or an unknown class.
        """
        if not 1 <= n <= 4096:
            raise AigcError(f"n = {n}: expected 1 to 4096 images")
        labels = None
        if label is not None:
            labels = torch.full((n,), self.class_index(label), dtype=torch.long, device=self.device)
        elif self.classes:
            labels = (torch.arange(n) % len(self.classes)).to(self.device)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.model.generate(n, labels, gen).float().cpu()

    def _need_vae(self, what: str) -> None:
        if self.family != "vae":
            raise AigcError(f"{what} needs a VAE; {self.folder} is a {self.family!r} model")

    def _labels_for(self, n: int, label) -> torch.Tensor | None:
        if not self.model.config.conditional:
            if label is not None:
                self.class_index(label)  # raises: an unconditional model has no classes
            return None
        if label is None:
            raise AigcError(f"{self.folder}: a conditional VAE; pass the images' class (--class)")
        return torch.full((n,), self.class_index(label), dtype=torch.long, device=self.device)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, label=None) -> torch.Tensor:
        """VAE: decode the posterior mean of each image: ``(N, C, S, S)`` -> same shape."""
        self._need_vae("reconstruction")
        y = self._labels_for(len(images), label)
        mu, _ = self.model.encode(images.to(self.device), y)
        return self.model.mean_image(self.model.decode(mu, y)).float().cpu()

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 10, label=None) -> torch.Tensor:
        """VAE: ``steps`` images decoded along the straight line between the posterior means of a and b.

        Args:
            a, b: images ``(C, S, S)`` in [-1, 1].
        Returns:
            ``(steps, C, S, S)``, the first decoded from a's latent, the last from b's.
        """
        self._need_vae("interpolation")
        if not 2 <= steps <= 256:
            raise AigcError(f"--steps {steps}: expected 2 to 256 images in the strip")
        y = self._labels_for(2, label)
        mu, _ = self.model.encode(torch.stack([a, b]).to(self.device), y)
        w = torch.linspace(0, 1, steps, device=self.device)[:, None]
        z = (1 - w) * mu[0] + w * mu[1]  # (steps, z_dim)
        ys = None if y is None else y[:1].expand(steps)
        return self.model.mean_image(self.model.decode(z, ys)).float().cpu()

    def read_images(self, paths: list[str | Path]) -> torch.Tensor:
        """Image files (or folders of them) -> ``(N, C, S, S)`` in [-1, 1], converted to the model's shape.

        Raises:
            AigcError: a missing path, an undecodable image (named), or no images.
        """
        from aigc.data.images import IMAGE_SUFFIXES, read_image_file, to_signed

        c, size = self.model.config.channels, self.model.config.image_size
        files = []
        for p in map(Path, paths):
            if p.is_dir():
                files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            elif p.is_file():
                files.append(p)
            else:
                raise AigcError(f"{p}: no such image file or folder")
        if not files:
            raise AigcError(f"{', '.join(map(str, paths))}: no images found")
        return to_signed(torch.from_numpy(np.stack([read_image_file(f, c, size, True) for f in files])))


def code_end(text: str, line_start: bool = False) -> int:
    """Where a code completion ends: the first newline followed by a line that starts at column 0
    (a new ``def``, ``class``, ``if __name__``, a comment, ...), or 0 when ``line_start`` (the
    prompt ended a line) and the text itself starts at column 0. -1 when it has not ended.
    """
    if line_start and text and not text[0].isspace():
        return 0
    m = _DEDENT.search(text)
    return m.start() if m else -1


_DEDENT = re.compile(r"\n(?=\S)")


def hf_sample_defaults(path: Path) -> SampleConfig:
    """Our sampling defaults from a transformers ``generation_config.json`` (temperature, top-p,
    top-k, repetition penalty, max_new_tokens; greedy when ``do_sample`` is false)."""
    defaults = SampleConfig()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return defaults
    if not isinstance(raw, dict):
        return defaults
    if raw.get("do_sample") is False:
        defaults.temperature = 0.0
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                         ("repetition_penalty", "repetition_penalty"), ("max_new_tokens", "max_new_tokens")):
        value = raw.get(theirs)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (ours != "temperature"
                                                                               or raw.get("do_sample") is not False):
            setattr(defaults, ours, type(getattr(defaults, ours))(value))
    return defaults


def load(path: str | Path, device: str = "auto"):
    """Load a model from a model folder or a run folder (its latest checkpoint).

    Returns a :class:`TextModel` for ``gpt``/``lstm`` and an :class:`ImageModel` for ``dcgan``/``vae``.

    Raises:
        AigcError: not a model or run folder, an unknown family, or missing/corrupt files.
    """
    folder = resolve_model_folder(path)
    model = load_model_folder(folder, pick_device(device))
    if model.family not in TEXT_FAMILIES:
        return ImageModel(model, folder)
    tok_folder = folder
    if not (folder / "tokenizer.json").is_file() and (folder / "adapter_config.json").is_file():
        from aigc.models import resolve_base
        from aigc.models.lora import adapter_base

        tok_folder = resolve_base(adapter_base(folder), folder)  # an adapter without its own tokenizer: the base's
    tokenizer = Tokenizer.load(tok_folder / "tokenizer.json")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise AigcError(f"{folder}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size}")
    defaults = SampleConfig()
    gen_path = tok_folder / "generation_config.json"
    if is_hf_folder(tok_folder):  # transformers' generation_config.json: carry over its sampling settings
        defaults = hf_sample_defaults(gen_path)
    elif gen_path.is_file():
        try:
            raw = json.loads(gen_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AigcError(f"{gen_path}: corrupt generation_config.json") from None
        defaults = build_dataclass(SampleConfig, raw, "sample", str(gen_path))
    return TextModel(model, tokenizer, defaults, folder, load_chat_template(tok_folder))
