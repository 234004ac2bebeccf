"""Captioned images for text-to-image models: the ``color-fashion`` builder, caption tokens and
the colour of a garment.

``color-fashion`` is built from Fashion-MNIST (Xiao et al. 2017) and made here, deterministically
from its split seed: each 28x28 garment is padded to 32x32 and painted in one of eight colours
(pixel = intensity x the colour's RGB, background black), and captioned from templates in English
and Chinese ("a red dress", "a dress in red", "红色的连衣裙", "一条红色的连衣裙", ...). Ten of the
80 colour x class pairs (:data:`HELD_OUT`) never appear in the train split; the val split keeps
every pair, so a benchmark can ask whether a model composes a colour and a garment it never saw
together.

Captions reach the model as character ids from a character-level tokenizer saved as
tokenizer.json beside the weights (id 0, the boundary token, is padding), at most ``length``
characters; a longer prompt or a character outside the vocabulary is refused by name.
"""

from __future__ import annotations

import colorsys
import json
import unicodedata
from pathlib import Path

import numpy as np
import torch

from aigc.data.tokenizer import Tokenizer, train_char_tokenizer
from aigc.errors import AigcError, check_unicode

# name, Chinese name, RGB (0-255, brightest channel 255 so a garment's intensity is its max channel)
COLORS = [("red", "红色", (255, 40, 40)), ("orange", "橙色", (255, 140, 0)), ("yellow", "黄色", (255, 230, 0)),
          ("green", "绿色", (30, 255, 60)), ("cyan", "青色", (0, 235, 255)), ("blue", "蓝色", (40, 90, 255)),
          ("purple", "紫色", (150, 50, 255)), ("pink", "粉色", (255, 60, 190))]
# the garment of each Fashion-MNIST class in captions: English, Chinese, Chinese measure word
GARMENTS = [("t-shirt", "T恤", "件"), ("pair of trousers", "裤子", "条"), ("pullover", "套衫", "件"),
            ("dress", "连衣裙", "条"), ("coat", "外套", "件"), ("sandal", "凉鞋", "双"), ("shirt", "衬衫", "件"),
            ("sneaker", "运动鞋", "双"), ("bag", "包", "个"), ("ankle boot", "短靴", "双")]
TEMPLATES_EN = ["a {c} {g}", "a {g} in {c}", "{c} {g}", "a photo of a {c} {g}"]
TEMPLATES_ZH = ["{c}的{g}", "一{m}{c}的{g}", "{c}{g}", "{g}，{c}"]
# (colour, class) pairs kept out of the train split: one per class, colours spread over all eight
HELD_OUT = [((3 * k + 1) % 8, k) for k in range(10)]
PAD = 32  # the side the 28x28 garments are padded to


def hue_degrees(rgb) -> float:
    """The HSV hue of an ``(r, g, b)`` colour of 0-255 integers, in degrees [0, 360)."""
    r, g, b = (v / 255 for v in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360


def caption(colour: int, garment: int, template: int, chinese: bool) -> str:
    """The caption of a garment of class ``garment`` in colour ``colour`` from template ``template``."""
    name, zh, _ = COLORS[colour]
    g_en, g_zh, measure = GARMENTS[garment]
    if chinese:
        return TEMPLATES_ZH[template % len(TEMPLATES_ZH)].format(c=zh, g=g_zh, m=measure)
    text = TEMPLATES_EN[template % len(TEMPLATES_EN)].format(c=name, g=g_en)
    return text.replace("a orange", "an orange")


def colorize(gray: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Paint garments: ``gray (N, 28, 28)`` or ``(N, 1, 28, 28)`` uint8 and ``colours (N,)`` ->
    ``(N, 3, 32, 32)`` uint8, each pixel its intensity times the colour (rounded), padded with black."""
    g = gray.reshape(len(gray), 28, 28).astype(np.float32) / 255.0
    rgb = np.array([c[2] for c in COLORS], np.float32)[colours]  # (N, 3)
    out = np.zeros((len(gray), 3, PAD, PAD), np.uint8)
    off = (PAD - 28) // 2
    out[:, :, off:off + 28, off:off + 28] = np.rint(g[:, None] * rgb[:, :, None, None]).astype(np.uint8)
    return out


def build_color_fashion(splits: dict, seed: int) -> dict:
    """Fashion-MNIST splits ``{"train": (gray, labels), "val": ...}`` -> ``{split: (images (N, 3, 32, 32)
    uint8, labels (N,) int64, colours (N,) int64, captions list[str])}``; train holds no :data:`HELD_OUT` pair.

    Raises:
        AigcError: a split without labels.
    """
    out = {}
    held = np.zeros((len(COLORS), len(GARMENTS)), bool)
    for c, k in HELD_OUT:
        held[c, k] = True
    for i, (name, (gray, labels)) in enumerate(sorted(splits.items())):
        if labels is None:
            raise AigcError("color-fashion needs Fashion-MNIST's label files (train-labels-idx1-ubyte)")
        rng = np.random.default_rng([seed, i])
        labels = labels.astype(np.int64)
        colours = rng.integers(0, len(COLORS), len(labels))
        if name == "train":  # redraw held-out pairs until none is left
            bad = held[colours, labels]
            while bad.any():
                colours[bad] = rng.integers(0, len(COLORS), int(bad.sum()))
                bad = held[colours, labels]
        templates = rng.integers(0, 4, len(labels))
        chinese = rng.random(len(labels)) < 0.5
        captions = [caption(int(c), int(k), int(t), bool(z)) for c, k, t, z in zip(colours, labels, templates, chinese)]
        out[name] = (colorize(gray, colours), labels, colours.astype(np.int64), captions)
    return out


def read_metadata_captions(folder: Path, files: list[Path]) -> list[str] | None:
    """The captions of an image folder from its ``metadata.jsonl`` (the layout of Hugging Face's
    ImageFolder: one JSON object per line, ``file_name`` relative to the folder and the caption in
    ``text`` or ``caption``), in the order of ``files``; None when the folder has no such file.

    Raises:
        AigcError: a file that is not UTF-8, a line that is not a JSON object with those fields (named
            by line), two lines for one file, a caption for a file that is not there, or an image without
            a caption.
    """
    path = folder / "metadata.jsonl"
    if not path.is_file():
        return None
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")  # not splitlines(): U+2028 may sit in a caption
    except UnicodeDecodeError as e:
        raise AigcError(f"{path}: not UTF-8 (byte {e.start}); metadata.jsonl is UTF-8 JSON lines") from None
    captions: dict[str, str] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AigcError(f"{path}:{no}: not JSON ({e.msg})") from None
        text = row.get("text", row.get("caption")) if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or not isinstance(text, str):
            raise AigcError(f"{path}:{no}: expected an object with \"file_name\" and \"text\" (or \"caption\") strings")
        check_unicode(text, f"{path}:{no} caption")
        name = Path(row["file_name"]).as_posix()
        if name in captions:
            raise AigcError(f"{path}:{no}: a second caption for {name!r}; one line per image")
        captions[name] = text
    names = [f.relative_to(folder).as_posix() for f in files]
    stray = sorted(set(captions) - set(names))
    if stray:
        raise AigcError(f"{path}: a caption for {stray[0]!r}, which is not an image in {folder}")
    missing = [n for n in names if n not in captions]
    if missing:
        raise AigcError(f"{path}: no caption for {missing[0]!r} ({len(missing)} images without one); every image "
                        "of a captioned folder needs one")
    return [captions[n] for n in names]


def normalise_prompt(text: str) -> str:
    """What the caption encoder reads: NFKC (full-width letters become ASCII), lower case, spaces collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def caption_tokenizer(captions: list[str]) -> Tokenizer:
    """A character tokenizer over the captions plus printable ASCII and common CJK punctuation."""
    extra = "".join(chr(i) for i in range(32, 127)).lower() + "，。、；：？！“”‘’（）"
    return train_char_tokenizer([normalise_prompt(c) for c in captions] + [extra])


def _short(text: str, n: int = 40) -> str:
    return repr(text[:n]) + ("..." if len(text) > n else "")


def base_caption_tokenizer(base: Tokenizer, captions: dict[str, list[str]], source) -> Tokenizer:
    """The tokenizer of a text-to-image model being fine-tuned, checked to read every caption of the
    new data (``captions``: split -> list of str): its ids are the ones the base's embeddings know.

    Raises:
        AigcError: characters the base never read (the most frequent named, with a caption holding it).
    """
    texts = [(split, c, normalise_prompt(c)) for split, cs in captions.items() for c in cs]
    missing = base.missing_characters(t for _, _, t in texts)
    if missing:
        ch = next(iter(missing))
        split, c = next((split, c) for split, c, t in texts if ch in t)
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise AigcError(f"{source}: {split} caption {_short(c)}: character {ch!r} (U+{ord(ch):04X}){more} not in "
                        f"the base model's vocabulary of {base.vocab_size} characters; fine-tune on captions in "
                        "the base's characters")
    return base


def encode_prompts(tokenizer: Tokenizer, prompts: list[str], length: int) -> torch.Tensor:
    """Prompts -> ``(B, length)`` int64 character ids, padded with 0; "" is the all-padding (null) row.

    Raises:
        AigcError: a prompt longer than ``length`` characters or with a character the vocabulary lacks
            (named with its code point).
    """
    rows = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        text = normalise_prompt(p)
        if len(text) > length:
            raise AigcError(f"prompt {_short(p)} has {len(text)} characters; this model reads at most {length}")
        for token in tokenizer.specials:
            if token in text:
                raise AigcError(f"prompt {_short(p)} holds the special token {token!r}; a prompt is plain text")
        ids = tokenizer.encode(text, "prompt") if text else []
        rows[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return rows


def garment_colours(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """The colour (index into :data:`COLORS`) of each garment: ``images (N, 3, S, S)`` float in [-1, 1] ->
    ``(N,)`` int64, the colour whose hue is nearest the hue of the mean RGB of the garment pixels
    (brightest channel above ``threshold`` of full scale); -1 where no pixel is bright enough."""
    x = (images.float().clamp(-1, 1) + 1) / 2  # (N, 3, S, S) in [0, 1]
    bright = x.amax(1) > threshold  # (N, S, S)
    hues = torch.tensor([hue_degrees(c[2]) for c in COLORS])
    out = torch.full((len(x),), -1, dtype=torch.long)
    for i in range(len(x)):
        if bright[i].sum() < 4:
            continue
        mean = x[i][:, bright[i]].mean(1)  # (3,)
        h = colorsys.rgb_to_hsv(*mean.tolist())[0] * 360
        d = (hues - h).abs()
        out[i] = int(torch.minimum(d, 360 - d).argmin())
    return out


def garment_gray(images: torch.Tensor) -> torch.Tensor:
    """The garment's intensity as a Fashion-MNIST image: ``(N, 3, 32, 32)`` in [-1, 1] -> ``(N, 1, 28, 28)``,
    the brightest channel of the centre 28x28 (exactly the source image for a painted one)."""
    off = (PAD - 28) // 2
    return images[:, :, off:off + 28, off:off + 28].amax(1, keepdim=True)
