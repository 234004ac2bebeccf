"""Run configuration: small dataclasses, read from TOML, overridden from the command line.

Config layer: knows the registry of model families (to build ``[model]``) and the base
layer; knows nothing of data files, tokenizers, folders' contents or training.

A run config has four sections, each a dataclass below (``[model]`` is the config
class of the chosen family, see :mod:`aigc.models`)::

    [data]    text: corpus and tokenizer                      -> DataConfig
              images: source, size, channels                  -> ImageDataConfig
    [model]   family = "gpt" | "lstm" | "dcgan" | "vae"       -> GPTConfig / LSTMConfig / DCGANConfig / VAEConfig
    [train]   optimizer, schedule, run folder                 -> TrainConfig
    [sample]  text: default generation parameters             -> SampleConfig
              images: grid size                               -> ImageSampleConfig

The family decides which ``[data]`` and ``[sample]`` classes apply.

Every key has a default except ``model.family``. Unknown keys are errors (a typo
must not silently fall back to a default). The resolved config, with every default
written out, is saved as ``config.toml`` in the run folder and is enough to repeat
the run.

Overrides use ``--section.key=value``; the value is read as a TOML value when it
parses (``3e-4``, ``true``, ``"text"``) and as a plain string otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from aigc.errors import AigcError, check_unicode
from aigc.folders import tokenizer_file
from aigc.models import IMAGE_FAMILIES, config_class, family_of
from aigc.models.lora import LINEAR_MODULES, LoRAConfig


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token shards.

    ``dataset`` is a named dataset (``tang-poems``) or empty; ``source`` is a path
    to a ``.txt`` file, a ``.jsonl`` file or a directory (files matched by ``glob``).
    """

    dataset: str = ""  # a named dataset (aigc data list), or "" to use `source`
    source: str = ""  # path to a .txt / .jsonl file or a directory
    format: str = "auto"  # auto | txt | jsonl | dir | code | chat | music (auto: chat for a .jsonl of {"messages": [...]}, music for a .abc/.mid/.xml file)
    field: str = "text"  # the JSON field holding the document, for .jsonl
    separator: str = ""  # txt: a line equal to this separates documents; "" = one document per line
    glob: str = "**/*.txt"  # dir: which files to read, relative to the directory
    whole_file: bool = False  # txt/dir: each file is one document (for code, say)
    tokenizer: str = "char"  # char | bpe (byte-level BPE) | a tokenizer.json or model folder to reuse (a base model's)
    vocab_size: int = 8192  # bpe only: target vocabulary size, special tokens included
    val_fraction: float = 0.05  # share of documents held out for validation
    split_seed: int = 1234  # seed of the document-level train/val split
    prepared_dir: str = ""  # where `aigc prepare` writes shards; "" = prepared/<name>-<tokenizer>
    extensions: list[str] = dataclasses.field(default_factory=lambda: [".py"])  # code: the file extensions to keep
    max_file_bytes: int = 1_000_000  # code: larger files are skipped
    fim_rate: float = 0.0  # share of train documents made fill-in-the-middle examples (Bavarian et al. 2022)
    fim_spm_rate: float = 0.5  # of those, the share in suffix-prefix-middle order (the rest prefix-suffix-middle)
    transpose: list[int] = dataclasses.field(default_factory=list)  # music: also train on every train tune moved by these semitones (e.g. [-2, 2])
    chat_template: str = ""  # chat: "" = the tokenizer's own (a base model's tokenizer_config.json) | chatml

    def validate(self) -> None:
        if not self.dataset and not self.source:
            raise AigcError("config key data.dataset or data.source must be set (a named dataset or a path)")
        if self.format not in ("auto", "txt", "jsonl", "dir", "code", "chat", "music"):
            raise AigcError(f"data.format = {self.format!r}: expected one of auto, txt, jsonl, dir, code, chat, music")
        if self.chat_template not in ("", "chatml"):
            raise AigcError(f"data.chat_template = {self.chat_template!r}: expected \"\" (the tokenizer's own "
                            "template) or \"chatml\"")
        if self.format == "chat" and self.dataset:
            raise AigcError(f"data.format = \"chat\" reads data.source (a .jsonl of conversations); data.dataset = "
                            f"{self.dataset!r} is not a chat dataset")
        if not all(isinstance(k, int) and -12 <= k <= 12 for k in self.transpose):
            raise AigcError(f"data.transpose = {self.transpose!r}: expected semitone shifts from -12 to 12, e.g. [-2, 2]")
        if self.format == "chat" and self.fim_rate > 0:
            raise AigcError("data.fim_rate > 0 does not apply to chat data (data.format = \"chat\"); set it to 0")
        if not self.extensions or not all(isinstance(e, str) and e.strip(".") for e in self.extensions):
            raise AigcError(f"data.extensions = {self.extensions!r}: expected file extensions like [\".py\"]")
        if self.max_file_bytes < 1:
            raise AigcError(f"data.max_file_bytes = {self.max_file_bytes}: expected a positive number of bytes")
        for name in ("fim_rate", "fim_spm_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AigcError(f"data.{name} = {getattr(self, name)}: expected a number in [0, 1]")
        if self.fim_rate > 0 and self.tokenizer == "char":
            raise AigcError("data.fim_rate > 0 needs data.tokenizer = \"bpe\" (the fill-in-the-middle markers "
                            "are special tokens of the BPE vocabulary)")
        if self.tokenizer not in ("char", "bpe"):
            tokenizer_file(self.tokenizer, "data.tokenizer")  # raises unless it names a tokenizer.json
            if self.fim_rate > 0:
                raise AigcError("data.fim_rate > 0 needs data.tokenizer = \"bpe\" (a reused tokenizer has no "
                                "fill-in-the-middle markers)")
        if self.tokenizer == "bpe" and self.vocab_size < 260:
            raise AigcError(f"data.vocab_size = {self.vocab_size}: byte-level BPE needs at least 260 (256 bytes + specials)")
        if not 0 <= self.split_seed < 2**32:
            raise AigcError(f"data.split_seed = {self.split_seed}: expected an integer in [0, 2**32)")
        if not 0.0 < self.val_fraction < 1.0:
            raise AigcError(f"data.val_fraction = {self.val_fraction}: expected a number between 0 and 1")


@dataclass
class ImageDataConfig:
    """Where the images come from and how they are shaped (the ``[data]`` of image families).

    ``dataset`` is a named image dataset (``fashion-mnist``) or empty; ``source`` is a
    folder of IDX files or of images, or an .npy/.npz file (see :mod:`aigc.data.images`).
    """

    dataset: str = ""  # a named image dataset (aigc data list), or "" to use `source`
    source: str = ""  # IDX folder/file, image folder, .npy or .npz; for a named dataset: its folder
    format: str = "auto"  # auto | idx | folder | npy
    image_size: int = 28  # side of the square images the model sees, in pixels
    channels: int = 1  # 1 = grayscale, 3 = RGB (every image is converted)
    resize: bool = True  # resize images of another size (false: reject them, naming the file)
    max_image_pixels: int = 4096 * 4096  # refuse an image file declaring more pixels, before decoding it
    val_fraction: float = 0.05  # held out when the source has no test split
    split_seed: int = 1234
    prepared_dir: str = ""  # "" = prepared/<name>-<channels>x<image_size>

    def validate(self) -> None:
        if not self.dataset and not self.source:
            raise AigcError("config key data.dataset or data.source must be set (a named dataset or a path)")
        if self.format not in ("auto", "idx", "folder", "npy"):
            raise AigcError(f"data.format = {self.format!r}: expected one of auto, idx, folder, npy")
        if not 8 <= self.image_size <= 1024:
            raise AigcError(f"data.image_size = {self.image_size}: expected a side in [8, 1024] pixels")
        if self.channels not in (1, 3):
            raise AigcError(f"data.channels = {self.channels}: expected 1 (grayscale) or 3 (RGB)")
        if self.max_image_pixels < self.image_size ** 2:
            raise AigcError(f"data.max_image_pixels = {self.max_image_pixels}: expected at least image_size^2 "
                            f"({self.image_size ** 2})")
        if not 0 <= self.split_seed < 2**32:
            raise AigcError(f"data.split_seed = {self.split_seed}: expected an integer in [0, 2**32)")
        if not 0.0 < self.val_fraction < 1.0:
            raise AigcError(f"data.val_fraction = {self.val_fraction}: expected a number between 0 and 1")


@dataclass
class TrainConfig:
    """Optimizer, schedule, evaluation and checkpointing of a training run.

    The learning rate warms up linearly for ``warmup_steps`` steps, then decays
    with a cosine to ``min_lr`` at ``max_steps`` (Loshchilov & Hutter 2017). With
    ``max_minutes`` > 0 the run also stops at that wall time, and the schedule
    follows whichever of steps or time is further along.
    """

    out_dir: str = "runs/run"  # the run folder
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | bfloat16 | float16 (autocast; float16 only on CUDA)
    threads: int = 0  # torch CPU threads; 0 = all available cores
    compile: bool = False  # torch.compile the model for training (the first steps pay the compile time)
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state over the ranks (FSDP2)
    batch_size: int = 32  # sequences (or images) per micro-batch, per rank under torchrun
    global_batch: int = 0  # > 0: the global batch (per-rank batch x ranks x grad_accum); batch_size is derived
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 2000  # optimizer steps
    max_minutes: float = 0.0  # stop after this wall time (0 = no limit)
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine
    warmup_steps: int = 100
    weight_decay: float = 0.1  # AdamW decay on matrices; none on biases, norms, embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    eval_interval: int = 250  # steps between evaluations on val
    eval_batches: int = 20  # micro-batches per evaluation
    log_interval: int = 10  # steps between metric lines
    checkpoint_interval: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    time_limit: str = "wall"  # what max_minutes counts: wall (clock) | cpu (this process's CPU time, all threads)
    init_from: str = ""  # a model folder (aigc's, a Hugging Face one, or `tang-base`) to fine-tune instead of random weights
    seq_len: int = 0  # tokens per training sequence; 0 = model.block_size, at most 2048 (a base's context may be far longer)
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank on the frozen init_from model (Hu et al. 2021)
    lora_alpha: float = 16.0  # LoRA scale: the update is multiplied by lora_alpha / lora_rank
    lora_dropout: float = 0.0  # dropout on the LoRA adapters' input
    lora_targets: list[str] = dataclasses.field(default_factory=lambda: list(LINEAR_MODULES))  # linear layers adapted (all seven)
    log: list[str] = dataclasses.field(default_factory=list)  # extra loggers beside metrics.jsonl: "tensorboard"

    def validate(self) -> None:
        positive = ["batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches",
                    "log_interval", "checkpoint_interval", "keep_checkpoints"]
        for name in positive:
            if getattr(self, name) < 1:
                raise AigcError(f"train.{name} = {getattr(self, name)}: expected a positive integer")
        if not 0 < self.lr < float("inf"):
            raise AigcError(f"train.lr = {self.lr}: the learning rate must be a positive finite number")
        if not 0 <= self.seed < 2**32:
            raise AigcError(f"train.seed = {self.seed}: expected an integer in [0, 2**32)")
        if not self.out_dir.strip():
            raise AigcError("train.out_dir is empty: name a folder for the run")
        if not 0 <= self.threads <= (os.cpu_count() or 1):
            raise AigcError(f"train.threads = {self.threads}: expected 0 (all cores) up to this machine's "
                            f"{os.cpu_count() or 1} cores")
        if not 0 <= self.min_lr <= self.lr:
            raise AigcError(f"train.min_lr = {self.min_lr}: expected 0 <= min_lr <= lr ({self.lr})")
        if self.global_batch < 0:
            raise AigcError(f"train.global_batch = {self.global_batch}: expected 0 (batch_size per rank) or a positive "
                            "number of sequences")
        if not isinstance(self.log, list) or any(x not in ("tensorboard",) for x in self.log):
            raise AigcError(f"train.log = {self.log!r}: expected a list of loggers from ['tensorboard']")
        if self.seq_len < 0:
            raise AigcError(f"train.seq_len = {self.seq_len}: expected 0 (the model's context) or a positive length")
        if self.lora_rank < 0:
            raise AigcError(f"train.lora_rank = {self.lora_rank}: expected 0 (full fine-tuning) or a positive rank")
        if self.lora_rank:
            if not self.init_from:
                raise AigcError("train.lora_rank > 0 needs train.init_from (LoRA adapts a pretrained model)")
            self.lora().validate()
        if self.warmup_steps < 0:
            raise AigcError(f"train.warmup_steps = {self.warmup_steps}: expected 0 or more")
        for name in ("weight_decay", "grad_clip", "max_minutes"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise AigcError(f"train.{name} = {getattr(self, name)}: expected 0 or more")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise AigcError(f"train.{name} = {getattr(self, name)}: expected a number in [0, 1)")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise AigcError(f"train.dtype = {self.dtype!r}: expected float32, bfloat16 or float16")
        if self.time_limit not in ("wall", "cpu"):
            raise AigcError(f"train.time_limit = {self.time_limit!r}: expected 'wall' or 'cpu'")

    def lora(self) -> LoRAConfig | None:
        """The :class:`aigc.models.lora.LoRAConfig` of the ``lora_*`` keys (None when lora_rank = 0)."""
        if not self.lora_rank:
            return None
        return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, list(self.lora_targets))


@dataclass
class SampleConfig:
    """How text is generated: the one settings object from the CLI, the server or the API to the sampler.

    A model folder's ``generation_config.json`` holds its defaults (the ``[sample]`` section
    of the run that made it); a request's settings are those defaults with what it sets
    replaced (:meth:`aigc.generate.text.TextModel.settings`). The sampler applies the
    penalties, temperature, top-k and top-p in the order :mod:`aigc.generate.sampling` gives.
    """

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p: float = 0.95  # nucleus sampling: smallest set with this probability mass (1 = off)
    repetition_penalty: float = 1.0  # CTRL-style penalty on tokens already present (1 = off)
    presence_penalty: float = 0.0  # OpenAI's: logit -= this for every token already present
    frequency_penalty: float = 0.0  # OpenAI's: logit -= this times the token's count so far
    stop: list[str] = field(default_factory=list)  # stop strings, not included in the output
    stop_token_ids: list[int] = field(default_factory=list)  # tokens that end a sample (e.g. a chat turn's end)
    stop_at_document_end: bool = True  # stop when the model emits the document-boundary token
    code_stops: bool = False  # code: stop where a line starts at column 0 (a new def, class, if __name__, ...)
    token_healing: bool = True  # BPE: a prompt's trailing whitespace is regenerated as part of the first token
    prompts: list[str] = field(default_factory=list)  # prompts the demo prints samples for
    logprobs: bool = False  # report each generated token's log-probability (aigc.generate.logprobs)
    top_logprobs: int = 0  # with logprobs: also the k most likely tokens at each position (0 to 20)
    response_format: str = "text"  # text | json_object | json_schema (grammar-constrained, aigc.generate.grammar)
    json_schema: dict = field(default_factory=dict)  # the schema of response_format = "json_schema"
    content: str = "text"  # what the model writes: text | abc (tunes in ABC: a prompt is a tune's header, checked; samples render to MIDI/WAV)

    def validate(self) -> None:
        if self.content not in ("text", "abc"):
            raise AigcError(f"content = {self.content!r}: expected text or abc (music in ABC notation)")
        if self.max_new_tokens < 1:
            raise AigcError(f"max_new_tokens = {self.max_new_tokens}: expected a positive integer")
        if not (self.temperature == 0 or 1e-3 <= self.temperature <= 100):  # also rejects NaN and inf
            raise AigcError(f"temperature = {self.temperature}: expected 0 (greedy) or a number in [0.001, 100]")
        if self.top_k < 0:
            raise AigcError(f"top_k = {self.top_k}: expected 0 (off) or more")
        if not 0 < self.top_p <= 1:  # also rejects NaN
            raise AigcError(f"top_p = {self.top_p}: expected a number in (0, 1]")
        if not 1e-2 <= self.repetition_penalty <= 100:
            raise AigcError(f"repetition_penalty = {self.repetition_penalty}: expected a number in [0.01, 100] (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:  # also rejects NaN
                raise AigcError(f"{name} = {getattr(self, name)}: expected -2 to 2")
        if any(not s for s in self.stop):
            raise AigcError("stop: an empty stop string would stop before the first token")
        for i, s in enumerate(self.stop):
            check_unicode(s, f"stop[{i}]")
        if any(not 0 <= t < 2**31 for t in self.stop_token_ids):
            raise AigcError(f"stop_token_ids = {self.stop_token_ids}: expected token ids (0 or more)")
        if not 0 <= self.top_logprobs <= 20:
            raise AigcError(f"top_logprobs = {self.top_logprobs}: expected 0 to 20")
        if self.response_format not in ("text", "json_object", "json_schema"):
            raise AigcError(f"response_format = {self.response_format!r}: expected text, json_object or json_schema")
        if self.response_format != "text" and not self.stop_at_document_end:
            raise AigcError("response_format: JSON output ends where its document ends; it cannot be combined with "
                            "ignore_eos / stop_at_document_end = false")
        if not isinstance(self.json_schema, dict):
            raise AigcError("json_schema: expected a JSON schema (an object; {} allows any JSON value)")


@dataclass
class ImageSampleConfig:
    """Image sampling defaults (the ``[sample]`` of image families): grids written during training and,
    for diffusion models, the sampler (also the defaults of ``aigc sample`` and the image route)."""

    n: int = 64  # images per grid
    nrow: int = 8  # images per grid row
    sampler: str = "ddim"  # diffusion: ddpm | ddim | dpm++2m
    steps: int = 20  # diffusion: sampler steps (1 to the model's training timesteps)
    guidance_scale: float = 3.0  # diffusion: classifier-free guidance (0 = unconditional, 1 = conditional only)
    eta: float = 0.0  # diffusion, DDIM: 0 = deterministic, 1 = DDPM's variance
    spacing: str = "trailing"  # diffusion: timestep spacing, trailing | leading

    def validate(self) -> None:
        if not 1 <= self.n <= 4096:
            raise AigcError(f"sample.n = {self.n}: expected 1 to 4096 images")
        if not 1 <= self.nrow <= 256:
            raise AigcError(f"sample.nrow = {self.nrow}: expected 1 to 256 images per row")
        samplers = ("ddpm", "ddim", "dpm++2m")
        if self.sampler not in samplers:
            raise AigcError(f"sampler = {self.sampler!r}: unknown (known: {', '.join(samplers)})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 10000:
            raise AigcError(f"steps = {self.steps}: expected an integer from 1 to the model's training timesteps")
        if not 0 <= self.guidance_scale <= 100:  # also rejects NaN
            raise AigcError(f"guidance_scale = {self.guidance_scale}: expected 0 (unconditional) to 100; 1 = "
                            "conditional only, above 1 = guided")
        if not 0 <= self.eta <= 1:
            raise AigcError(f"eta = {self.eta}: expected a number in [0, 1] (0 = deterministic DDIM)")
        if self.spacing not in ("trailing", "leading"):
            raise AigcError(f"spacing = {self.spacing!r}: expected 'trailing' or 'leading'")


@dataclass
class RunConfig:
    """The whole config of a run: data, model (a family's config), train, sample."""

    data: typing.Any  # DataConfig (text) or ImageDataConfig (images)
    model: typing.Any  # the family's config dataclass, e.g. GPTConfig
    train: TrainConfig
    sample: typing.Any  # SampleConfig (text) or ImageSampleConfig (images)

    @property
    def is_image(self) -> bool:
        return isinstance(self.data, ImageDataConfig)

    def to_dict(self) -> dict:
        model = {"family": family_of(self.model), **dataclasses.asdict(self.model)}
        return {"data": dataclasses.asdict(self.data), "model": model,
                "train": dataclasses.asdict(self.train), "sample": dataclasses.asdict(self.sample)}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def validate(self) -> None:
        self.data.validate()
        self.model.validate()
        self.train.validate()
        self.sample.validate()


def _type_ok(value, annotation) -> bool:
    """Is ``value`` (from TOML) acceptable for a dataclass field of type ``annotation``?"""
    if annotation in ("bool", bool):
        return isinstance(value, bool)
    if annotation in ("int", int):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in ("float", float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in ("str", str):
        return isinstance(value, str)
    if isinstance(annotation, str) and annotation.startswith("list[str]"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(annotation, str) and annotation.startswith("list[int]"):
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return True


def build_dataclass(cls, values: dict, section: str, source: str):
    """Build ``cls`` from a dict, rejecting unknown keys and wrong types.

    Raises:
        AigcError: naming ``section.key`` and ``source`` for an unknown key or a
            value of the wrong type.
    """
    if not isinstance(values, dict):
        raise AigcError(f"{source}: expected a table of {section} keys, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise AigcError(f"{source}: unknown config key '{section}.{key}' (known keys: {', '.join(known)})")
        annotation = known[key].type
        if not _type_ok(value, annotation):
            raise AigcError(f"{source}: config key '{section}.{key}' = {value!r}: expected a value of type {annotation}")
        if annotation in ("float", float) and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, str, object]:
    """Parse ``section.key=value`` (leading dashes allowed) into (section, key, value)."""
    body = text.lstrip("-")
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise AigcError(f"override {text!r}: expected --section.key=value, e.g. --train.lr=3e-4")
    dotted, raw = body.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def read_toml(path: str | Path) -> dict:
    """Read a TOML file; a missing or malformed file is an :class:`AigcError`."""
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"{path}: config file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise AigcError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise AigcError(f"{path}: invalid TOML: {e}") from None


def config_from_dict(raw: dict, source: str = "config", overrides: list[str] = ()) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a parsed TOML dict plus overrides.

    Raises:
        AigcError: unknown section or key, wrong type, missing ``model.family``,
            or a value out of range.
    """
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    parsed = [(text, *parse_override(text)) for text in overrides]
    for text, section, key, value in parsed:
        if section not in ("data", "model", "train", "sample"):
            raise AigcError(f"command line: unknown config section '{section}' in {text!r} "
                            "(known: data, model, train, sample)")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise AigcError(f"override {text!r}: '{section}' is not a config section")
        raw[section][key] = value
    sections = {"data", "model", "train", "sample"}
    for name, value in raw.items():
        if name not in sections:
            raise AigcError(f"{source}: unknown config section '{name}' (known: data, model, train, sample)")
        if not isinstance(value, dict):
            raise AigcError(f"{source}: '{name}' must be a [section] table")
    model = dict(raw.get("model", {}))
    if "family" not in model:
        raise AigcError(f"{source}: missing config key 'model.family' (e.g. family = \"gpt\" or \"lstm\")")
    family = model.pop("family")
    cls = config_class(family)
    image = family in IMAGE_FAMILIES
    classes = {"data": ImageDataConfig if image else DataConfig, "model": cls, "train": TrainConfig,
               "sample": ImageSampleConfig if image else SampleConfig}
    for text, section, key, _ in parsed:  # a typo on the command line is the command line's, not the file's
        known = [f.name for f in fields(classes[section])] + (["family"] if section == "model" else [])
        if key not in known:
            raise AigcError(f"command line: unknown config key '{section}.{key}' in {text!r} "
                            f"(known keys: {', '.join(known)})")
    cfg = RunConfig(
        data=build_dataclass(classes["data"], raw.get("data", {}), "data", source),
        model=build_dataclass(cls, model, "model", source),
        train=build_dataclass(TrainConfig, raw.get("train", {}), "train", source),
        sample=build_dataclass(classes["sample"], raw.get("sample", {}), "sample", source),
    )
    cfg.validate()
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a run config TOML file and apply ``--section.key=value`` overrides."""
    return config_from_dict(read_toml(path), str(path), overrides)
