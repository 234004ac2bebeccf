"""Image sources and prepared image datasets.

Sources (``data.source``, or the named dataset ``fashion-mnist``):

- **IDX** (LeCun's MNIST format, gzipped or raw): a folder holding
  ``train-images-idx3-ubyte[.gz]`` (+ ``train-labels-idx1-ubyte[.gz]``) and optionally
  ``t10k-images…``/``t10k-labels…`` as the held-out split; or one images file.
- **a folder of images** (PNG, JPEG, BMP, GIF, WebP in any mode: 16-bit, CMYK,
  palette, alpha): converted to ``channels`` and ``image_size``. Images in
  sub-folders take the sub-folder's name as their class (the ImageFolder layout).
- **.npy / .npz** arrays: ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, uint8
  in [0, 255] or floats in [0, 1]; an .npz may hold ``labels`` (or ``y``) beside
  ``images`` (or ``x``).

``aigc prepare`` (or the first ``aigc train``) writes the dataset once as uint8
arrays ``(N, C, H, W)`` in ``.npy`` files plus ``meta.json``; training reads those
and scales pixels to [-1, 1]. Where a source has no held-out split, a seeded
``val_fraction`` of the images is held out.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import sys
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from aigc.atomic import atomic_dir, read_json, write_json
from aigc.data.captions import PAD, build_color_fashion, caption_tokenizer, encode_prompts, read_metadata_captions
from aigc.data.tokenizer import Tokenizer
from aigc.errors import AigcError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MAX_IMAGE_PIXELS = 4096 * 4096  # the default of data.max_image_pixels: images are read into 28 to 1024 pixels
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
# other names of each class, Chinese first (so `--prompt 运动鞋` finds Sneaker); kept with a model trained on them
FASHION_ALIASES = [["T恤", "上衣", "t-shirt", "tshirt", "top"], ["裤子", "trousers", "pants"], ["套衫", "毛衣", "sweater"],
                   ["连衣裙", "裙子"], ["外套", "大衣"], ["凉鞋"], ["衬衫"], ["运动鞋", "sneakers"], ["包", "handbag"],
                   ["短靴", "靴子", "boot"]]


def class_aliases(classes: list[str]) -> list[list[str]]:
    """Other names of each class of a known dataset (Fashion-MNIST's, in Chinese and English), else none."""
    return [list(a) for a in FASHION_ALIASES] if list(classes) == FASHION_CLASSES else []


IMAGE_DATASETS = {
    "fashion-mnist": {
        "path": FASHION_MNIST_DIR,
        "classes": FASHION_CLASSES,
        "description": "Fashion-MNIST (Xiao et al. 2017, MIT): 60k + 10k grayscale 28x28 images, 10 classes "
                       "(Debian dataset-fashion-mnist)",
    },
    "color-fashion": {
        "path": FASHION_MNIST_DIR,
        "classes": FASHION_CLASSES,
        "captioned": True,
        "shape": (3, PAD),  # channels, image_size
        "description": "Fashion-MNIST garments painted in 8 colours, 32x32 RGB, captioned in English and Chinese; "
                       "10 colour x class pairs held out of train (built here from fashion-mnist: aigc.data.captions)",
    },
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ---------------------------------------------------------------- IDX
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of its stored shape.

    Format (LeCun et al., MNIST): two zero bytes, a type code (0x08 = uint8, ...),
    the number of dimensions, each dimension as a big-endian uint32, then the data.

    Raises:
        AigcError: a wrong magic number, an unknown type code, or a body shorter or
            longer than the header says, naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise AigcError(f"{path}: cannot read as an IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or not 1 <= raw[3] <= 4:
        raise AigcError(f"{path}: wrong magic number {raw[:4].hex() or '(empty file)'}; an IDX file starts with "
                        "00 00, a type code (08 for uint8) and its number of dimensions")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise AigcError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = len(raw) - header
    if body != expected:
        raise AigcError(f"{path}: truncated or corrupt IDX body: header says {shape} ({expected:,} bytes), "
                        f"file holds {body:,}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_folder(folder: Path) -> dict:
    """The splits of a folder of MNIST-style IDX files: {"train": (images, labels), "test": ...}."""
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _find(folder, f"{prefix}-images-idx3-ubyte")
        if images is None:
            continue
        labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
        x = read_idx(images)
        y = read_idx(labels).astype(np.int64) if labels is not None else None
        if y is not None and len(y) != len(x):
            raise AigcError(f"{labels}: {len(y)} labels for {len(x)} images in {images.name}")
        splits[split] = (x, y)
    if "train" not in splits:
        raise AigcError(f"{folder}: no train-images-idx3-ubyte[.gz] file (expected the MNIST/Fashion-MNIST "
                        "IDX file names)")
    return splits


# ---------------------------------------------------------------- image files
def to_array(img, channels: int, size: int, resize: bool, name: str) -> np.ndarray:
    """One PIL image -> uint8 ``(channels, size, size)``: any mode converted, resized if allowed.

    16-bit grayscale (and 32-bit holding values up to 65535) is scaled from [0, 65535]; CMYK, palette and
    alpha images are converted through RGB (alpha composited on white).

    Raises:
        AigcError: a size other than ``size`` when ``resize`` is False.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or 0 <= a.min() and a.max() <= 65535 else float(a.max())
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        if not resize:
            raise AigcError(f"{name}: {img.size[0]}x{img.size[1]} pixels, expected {size}x{size} "
                            "(set data.resize = true to resize)")
        img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


_PILLOW_GUARD = threading.Lock()  # Pillow's pixel limit is a module global


def _open_header(path: Path, max_pixels: int):
    """``Image.open`` with Pillow's own decompression-bomb guard at ``max_pixels`` and turned into
    an error: a format that decodes while it opens (an ICO holding a PNG) is stopped there too.

    Raises:
        AigcError: over the limit, naming the file and the pixels it declares.
    """
    with _PILLOW_GUARD, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            return Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            declared = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(declared.group(1)):,} pixels" if declared else "more pixels"
            raise AigcError(f"{path}: declares {size}, over the limit of {max_pixels:,} (data.max_image_pixels); "
                            "shrink it first, or raise the limit if you trust it") from None
        finally:
            Image.MAX_IMAGE_PIXELS = guard


def read_image_file(path: Path, channels: int, size: int, resize: bool,
                    max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One image file -> uint8 ``(channels, size, size)`` (see :func:`to_array`), turned upright as
    its EXIF orientation says (a phone's photo taken sideways is stored sideways).

    Args:
        max_pixels: refuse an image declaring more pixels than this, before decoding it (a
            decompression bomb declares 30000x30000 in a few bytes).

    Raises:
        AigcError: over ``max_pixels`` (the declared size named), a file that cannot be decoded
            as an image (named), or another size and ``resize`` is False.
    """
    try:
        with _open_header(path, max_pixels) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise AigcError(f"{path}: declares {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                                "(data.max_image_pixels); shrink it first, or raise the limit if you trust it")
            img.load()
            return to_array(ImageOps.exif_transpose(img), channels, size, resize, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise AigcError(f"{path}: cannot decode image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, sorted: the order of every array made from it."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(folder: Path, channels: int, size: int, resize: bool, progress: bool = True,
                      max_pixels: int = MAX_IMAGE_PIXELS):
    """Every image under ``folder`` -> (uint8 (N, C, H, W), labels or None, class names).

    Raises:
        AigcError: no images, or an image that cannot be decoded (named).
    """
    files = image_files(folder)
    if not files:
        raise AigcError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    classes = sorted({p.relative_to(folder).parts[0] for p in files if len(p.relative_to(folder).parts) > 1})
    labelled = classes and all(len(p.relative_to(folder).parts) > 1 for p in files)
    out = np.empty((len(files), channels, size, size), np.uint8)
    for i, p in enumerate(tqdm(files, desc="images", unit="img", disable=not progress, file=sys.stderr)):
        out[i] = read_image_file(p, channels, size, resize, max_pixels)
    labels = np.array([classes.index(p.relative_to(folder).parts[0]) for p in files], np.int64) if labelled else None
    return out, labels, (classes if labelled else [])


def _normalise_array(x: np.ndarray, channels: int, size: int, resize: bool, name: str) -> np.ndarray:
    """An array of images in a common layout -> uint8 (N, channels, size, size)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4) or len(x) == 0:
        raise AigcError(f"{name}: array of shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) "
                        "with C in 1, 3, 4 and N > 0")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise AigcError(f"{name}: float pixels must be finite and in [0, 1]")
        x = np.round(x * 255).astype(np.uint8)
    elif x.dtype != np.uint8:
        if x.dtype.kind not in "iu" or x.min() < 0 or x.max() > 255:
            raise AigcError(f"{name}: {x.dtype} pixels; expected uint8 in [0, 255] or floats in [0, 1]")
        x = x.astype(np.uint8)
    if x.shape[1] == channels and x.shape[2:] == (size, size):
        return np.ascontiguousarray(x)
    out = np.empty((len(x), channels, size, size), np.uint8)
    for i, a in enumerate(x):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[a.shape[0]]
        img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), mode)
        out[i] = to_array(img, channels, size, resize, f"{name}[{i}]")
    return out


def read_array_file(path: Path, channels: int, size: int, resize: bool):
    """A .npy or .npz file -> (uint8 (N, C, H, W), labels or None). Never unpickles."""
    labels = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                key = next((k for k in ("images", "x", "x_train") if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise AigcError(f"{path}: which array holds the images? expected a key 'images' or 'x' "
                                    f"(found: {', '.join(keys)})")
                x = loaded[key]
                lkey = next((k for k in ("labels", "y", "y_train") if k in keys), None)
                if lkey is not None:
                    labels = loaded[lkey].reshape(-1)
        else:
            x = loaded
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise AigcError(f"{path}: cannot read as {path.suffix} ({str(e).splitlines()[0]})") from None
    if labels is not None:
        if labels.dtype.kind not in "iu":
            raise AigcError(f"{path}: labels of dtype {labels.dtype}; expected integer class indices 0, 1, ...")
        if len(labels) and labels.min() < 0:
            raise AigcError(f"{path}: label {labels.min()} is negative; expected class indices 0, 1, ...")
        labels = labels.astype(np.int64)
    x = _normalise_array(x, channels, size, resize, str(path))
    if labels is not None and len(labels) != len(x):
        raise AigcError(f"{path}: {len(labels)} labels for {len(x)} images")
    return x, labels


def looks_like_images(source: str | Path) -> bool:
    """Is ``source`` image data (an array file, an IDX file or folder, a folder of images and no text)?"""
    path = Path(source)
    if path.is_file():
        return path.suffix in (".npy", ".npz") or "idx" in path.name
    if path.is_dir():
        if _find(path, "train-images-idx3-ubyte") is not None:
            return True
        files = [p for p in path.rglob("*") if p.is_file() and p != path / "metadata.jsonl"]  # captions
        return any(p.suffix.lower() in IMAGE_SUFFIXES for p in files) and not any(
            p.suffix.lower() in (".txt", ".jsonl", ".json", ".py", ".md") for p in files)
    return False


# ---------------------------------------------------------------- prepare
def source_name(cfg) -> str:
    if cfg.dataset:
        return cfg.dataset
    return Path(cfg.source).stem or "images"


def default_image_prepared_dir(cfg) -> Path:
    if cfg.prepared_dir:
        return Path(cfg.prepared_dir)
    return Path("prepared") / f"{source_name(cfg)}-{cfg.channels}x{cfg.image_size}"


def image_data_key(cfg) -> dict:
    """The settings that determine the prepared arrays (a change means a new folder)."""
    src = str(Path(cfg.source).resolve()) if cfg.source else ""
    key = {"dataset": cfg.dataset, "source": src, "format": cfg.format, "image_size": cfg.image_size,
           "channels": cfg.channels, "resize": cfg.resize, "val_fraction": cfg.val_fraction,
           "split_seed": cfg.split_seed}
    captions = Path(src) / "metadata.jsonl" if src else None
    if captions is not None and captions.is_file():  # new captions mean new prepared data
        key["captions_sha256"] = hashlib.sha256(captions.read_bytes()).hexdigest()
    return key


def load_source(cfg, progress: bool = True):
    """Read the source of ``cfg`` -> ({"train": (x, y), "val": (x, y)}, class names, description)."""
    resize = cfg.resize
    if cfg.dataset:
        if cfg.dataset not in IMAGE_DATASETS:
            raise AigcError(f"data.dataset = {cfg.dataset!r}: unknown image dataset (known: "
                            f"{', '.join(IMAGE_DATASETS)})")
        spec = IMAGE_DATASETS[cfg.dataset]
        folder = Path(cfg.source) if cfg.source else spec["path"]
        if _find(folder, "train-images-idx3-ubyte") is None:
            raise AigcError(f"{folder}: the {cfg.dataset} IDX files are not there; install them with "
                            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set data.source "
                            "to a folder holding train-images-idx3-ubyte.gz and the other three files")
        splits = read_idx_folder(folder)
        classes = spec["classes"]
        fmt = "idx"
        if spec.get("captioned"):
            if (cfg.channels, cfg.image_size) != (3, PAD):
                raise AigcError(f"data.dataset = {cfg.dataset!r} is 3x{PAD}x{PAD}; set data.channels = 3 and "
                                f"data.image_size = {PAD} (got {cfg.channels} and {cfg.image_size})")
            return build_color_fashion({"train": splits["train"], "val": splits["test"]}, cfg.split_seed), classes, fmt
    else:
        path = Path(cfg.source)
        if not path.exists():
            raise AigcError(f"{path}: data.source not found")
        fmt = cfg.format
        if fmt == "auto":
            if path.is_dir():
                fmt = "idx" if _find(path, "train-images-idx3-ubyte") else "folder"
            elif path.suffix in (".npy", ".npz"):
                fmt = "npy"
            else:
                fmt = "idx"
        classes, captions = [], None
        if fmt == "idx":
            splits = read_idx_folder(path) if path.is_dir() else {"train": (read_idx(path), None)}
        elif fmt == "folder":
            if not path.is_dir():
                raise AigcError(f"{path}: data.format = 'folder' needs a folder of images")
            captions = read_metadata_captions(path, image_files(path))  # metadata.jsonl, checked before decoding
            x, y, classes = read_image_folder(path, cfg.channels, cfg.image_size, resize, progress, cfg.max_image_pixels)
            splits = {"train": (x, y)}
        else:
            splits = {"train": read_array_file(path, cfg.channels, cfg.image_size, resize)}
    out = {}
    for name, (x, y) in splits.items():
        out[name] = (_normalise_array(x, cfg.channels, cfg.image_size, resize, f"{name} images"), y)
    if out["train"][1] is not None and not classes:
        classes = [str(i) for i in range(int(out["train"][1].max()) + 1)]
    if "test" in out:
        result = {"train": out["train"], "val": out["test"]}
    else:
        x, y = out["train"]
        if len(x) < 2:
            raise AigcError(f"{cfg.source or cfg.dataset}: {len(x)} image(s); need at least 2 to hold one out")
        perm = np.random.default_rng(cfg.split_seed).permutation(len(x))
        n_val = max(1, int(round(len(x) * cfg.val_fraction)))
        val, train = perm[:n_val], perm[n_val:]
        result = {"train": (x[train], None if y is None else y[train]),
                  "val": (x[val], None if y is None else y[val])}
        if not cfg.dataset and fmt == "folder" and captions is not None:  # no colours: those are color-fashion's
            result = {k: (*v, None, [captions[i] for i in part]) for (k, v), part in zip(result.items(), (train, val))}
    return result, classes, fmt


def prepare_images(cfg, out: str | Path | None = None, progress: bool = True) -> Path:
    """Read the image source of ``cfg`` and write the prepared dataset folder atomically."""
    folder = Path(out) if out else default_image_prepared_dir(cfg)
    if folder.exists() and any(folder.iterdir()) and not (folder / "meta.json").is_file():
        raise AigcError(f"{folder}: exists and is not a prepared dataset; choose another --out")
    splits, classes, fmt = load_source(cfg, progress)
    with atomic_dir(folder) as tmp:
        meta = {"kind": "images", "data": image_data_key(cfg), "format": fmt, "classes": classes,
                "channels": cfg.channels, "image_size": cfg.image_size, "splits": {}}
        captions = []
        for name, (x, y, *painted) in splits.items():
            np.save(tmp / f"{name}-images.npy", x)
            if y is not None:
                np.save(tmp / f"{name}-labels.npy", y)
            meta["splits"][name] = {"images": int(len(x)), "labelled": y is not None}
            if painted:  # a captioned dataset: each image's caption (and color-fashion's colour)
                if painted[0] is not None:
                    np.save(tmp / f"{name}-colors.npy", painted[0])
                write_json(tmp / f"{name}-captions.json", painted[1])
                captions += painted[1]
        if captions:
            meta["captioned"] = True
            caption_tokenizer(captions).save(tmp / "tokenizer.json")
        write_json(tmp / "meta.json", meta)
    return folder


class ImageData:
    """A prepared image dataset: uint8 arrays kept in memory, batches scaled to [-1, 1].

    Attributes:
        classes: class names (empty when unlabelled); ``labels[split]`` int64 or None.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.meta = read_json(self.folder / "meta.json", dict)
            self.images = {s: np.load(self.folder / f"{s}-images.npy", allow_pickle=False) for s in ("train", "val")}
            self.labels = {s: (np.load(self.folder / f"{s}-labels.npy", allow_pickle=False)
                               if self.meta["splits"][s]["labelled"] else None) for s in ("train", "val")}
        except (AigcError, OSError, ValueError, KeyError) as e:
            raise AigcError(f"{self.folder}: not a complete prepared image dataset ({e}); delete it and "
                            "prepare again") from None
        self.classes = list(self.meta.get("classes") or [])
        self.captions = self.colors = self.tokenizer = None
        if self.meta.get("captioned"):
            try:
                self.captions = {s: read_json(self.folder / f"{s}-captions.json", list) for s in ("train", "val")}
                if (self.folder / "train-colors.npy").is_file():
                    self.colors = {s: np.load(self.folder / f"{s}-colors.npy", allow_pickle=False) for s in ("train", "val")}
                self.tokenizer = Tokenizer.load(self.folder / "tokenizer.json")
            except (AigcError, OSError, ValueError) as e:
                raise AigcError(f"{self.folder}: not a complete captioned image dataset ({e}); delete it and "
                                "prepare again") from None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images["train"].shape[1:])

    def tensors(self, split: str, idx=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``(N, C, H, W) float32`` in [-1, 1] and labels ``(N,) int64`` (or None)."""
        x = self.images[split] if idx is None else self.images[split][idx]
        y = self.labels[split]
        y = None if y is None else torch.from_numpy(np.ascontiguousarray(y if idx is None else y[idx]))
        return to_signed(torch.from_numpy(np.ascontiguousarray(x))), y

    def batch(self, split: str, batch_size: int, gen: torch.Generator):
        """A batch of images drawn uniformly with replacement: ``(x, y)`` as in :meth:`tensors`."""
        return self.tensors(split, self.draw(split, batch_size, gen))

    def draw(self, split: str, batch_size: int, gen: torch.Generator) -> np.ndarray:
        """Indices of a batch drawn uniformly with replacement: ``(batch_size,)`` int64."""
        return torch.randint(len(self.images[split]), (batch_size,), generator=gen).numpy()

    def caption_tokens(self, split: str, idx, length: int) -> torch.Tensor:
        """The captions of images ``idx`` as ``(len(idx), length)`` character ids (0 = padding)."""
        if self.captions is None:
            raise AigcError(f"{self.folder}: no captions; a text-conditional model needs a captioned dataset "
                            "(data.dataset = 'color-fashion')")
        return encode_prompts(self.tokenizer, [self.captions[split][i] for i in idx], length)


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [0, 255] -> float32 [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float pixels [-1, 1] (clamped) -> uint8 [0, 255]."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
