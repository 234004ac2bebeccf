"""Image families: data sources, metrics against closed forms, training, sampling, provenance, bad input."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aigc.data.images import FASHION_MNIST_DIR, read_idx
from aigc.errors import AigcError
from aigc.evaluate.images import frechet_distance, frechet_distance_features, kernel_distance, precision_recall

from conftest import CORES, run_cli

HAVE_FMNIST = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


# ---------------------------------------------------------------- helpers
def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """An IDX file written by the spec (big-endian dims after 00 00 08 ndim)."""
    raw = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def shapes_dataset(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 28x28 images: a bright square top-left (0) or bottom-right (1), on noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        o = 3 if y[i] == 0 else 15
        x[i, o:o + 10, o:o + 10] = 230
    return x, y.astype(np.int64)


def image_config(tmp_path: Path, source: Path, family: str, steps: int = 30, **model) -> Path:
    body = {"dcgan": 'family = "dcgan"\nz_dim = 16\ng_width = 8\nd_width = 8\n',
            "vae": 'family = "vae"\nz_dim = 8\nwidth = 8\n'}[family]
    body += "".join(f"{k} = {json.dumps(v)}\n" for k, v in model.items())
    text = (f'[data]\nsource = "{source}"\nprepared_dir = "{tmp_path / "prepared"}"\n\n[model]\n{body}\n'
            f'[train]\nout_dir = "{tmp_path / "run"}"\nbatch_size = 16\nmax_steps = {steps}\nwarmup_steps = 0\n'
            f"lr = 2e-3\nbeta1 = 0.5\nweight_decay = 0.0\ngrad_clip = 0.0\neval_interval = {steps}\n"
            f"eval_batches = 4\nlog_interval = 1\ncheckpoint_interval = {steps}\nthreads = {CORES}\n\n"
            "[sample]\nn = 16\nnrow = 4\n")
    path = tmp_path / f"{family}.toml"
    path.write_text(text)
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shapes_npz(tmp_path_factory) -> Path:
    x, y = shapes_dataset()
    path = tmp_path_factory.mktemp("shapes") / "shapes.npz"
    np.savez(path, images=x, labels=y)
    return path


# ---------------------------------------------------------------- metrics vs closed forms
def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    # S2 = c * S1: Tr(S1 + S2 - 2 (S1 S2)^1/2) = (1 + c - 2 sqrt(c)) Tr(S1)
    expected = np.sum((mu1 - mu2) ** 2) + (1 + 4.0 - 2 * 2.0) * np.trace(cov)
    assert frechet_distance(mu1, cov, mu2, 4.0 * cov) == pytest.approx(expected, rel=1e-9)
    # diagonal covariances: |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 0.5, 3.0])
    expected = 1.0 + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance([0, 0, 0], np.diag(s1), [1, 0, 0], np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, cov, mu1, cov) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_samples_approaches_the_gaussian_value():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, size=(20000, 4))
    y = rng.normal(0.5, 2.0, size=(20000, 4))
    expected = 4 * 0.25 + 4 * (1 - 2) ** 2  # |dmu|^2 + sum (sigma1 - sigma2)^2
    assert frechet_distance_features(x, y) == pytest.approx(expected, rel=0.05)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same, same_std = kernel_distance(a, b, subsets=20, subset_size=500)
    shifted, _ = kernel_distance(a, b + 0.5, subsets=20, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.05 and shifted > 20 * abs(same)
    identical, _ = kernel_distance(a, a, subsets=10, subset_size=500)
    assert abs(identical) < 0.01


def test_precision_and_recall_of_identical_sets_are_one_and_disjoint_sets_zero():
    x = np.random.default_rng(3).normal(size=(500, 8))
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    p, r = precision_recall(x, x + 100.0, k=3)
    assert p == 0.0 and r == 0.0


# ---------------------------------------------------------------- data sources
def test_idx_round_trip_gzipped_and_raw(tmp_path):
    x, y = shapes_dataset(10)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", x)), x)
    assert np.array_equal(read_idx(write_idx(tmp_path / "b", y.astype(np.uint8), gz=False)), y)


def test_idx_wrong_magic_and_truncated_body_are_named(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(AigcError, match="wrong magic number"):
        read_idx(bad)
    x, _ = shapes_dataset(4)
    good = write_idx(tmp_path / "t.idx", x, gz=False)
    cut = tmp_path / "train-images-idx3-ubyte.cut"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(AigcError, match=r"truncated.*header says \(4, 28, 28\)"):
        read_idx(cut)
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(good.read_bytes()[:-7])
    out = run_cli("prepare", "--data.source=" + str(folder), "--data.format=idx", "--out", str(tmp_path / "p"))
    assert out.returncode != 0 and "truncated" in out.stderr and "train-images-idx3-ubyte" in out.stderr
    assert not (tmp_path / "p").exists()


def make_folder(root: Path) -> Path:
    """A labelled folder: two classes of PNGs in assorted modes and sizes."""
    x, y = shapes_dataset(12)
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / ("left" if label == 0 else "right")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(d / f"{i}.png")
    sixteen = Image.fromarray(x[0].astype(np.uint16) * 257)  # mode I;16
    assert sixteen.mode.startswith("I;16")
    sixteen.save(root / "left" / "sixteen.png")
    Image.fromarray(x[1]).convert("RGB").convert("CMYK").save(root / "right" / "cmyk.jpg")  # CMYK JPEG
    Image.fromarray(x[2]).resize((56, 40)).save(root / "left" / "big.png")  # another size
    Image.fromarray(x[3]).convert("RGBA").save(root / "right" / "alpha.png")
    return root


def test_folder_with_16bit_cmyk_alpha_and_mixed_sizes_is_converted(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nsource = "{folder}"\nprepared_dir = "{tmp_path / "p"}"\nval_fraction = 0.2\n'
                   '[model]\nfamily = "vae"\n')
    out = run_cli("prepare", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "2 classes" in out.stdout
    from aigc.data.images import ImageData

    d = ImageData(tmp_path / "p")
    assert d.classes == ["left", "right"] and d.shape == (1, 28, 28)
    assert len(d.images["train"]) + len(d.images["val"]) == 16
    # resize = false: the odd-sized image is rejected by name, nothing written
    strict = tmp_path / "strict.toml"
    strict.write_text(cfg.read_text().replace('val_fraction', 'resize = false\nval_fraction')
                      .replace(str(tmp_path / "p"), str(tmp_path / "p2")))
    out = run_cli("prepare", str(strict), "--quiet")
    assert out.returncode == 2 and "big.png" in out.stderr and "56x40" in out.stderr
    assert out.stderr.count("\n") == 1 and not (tmp_path / "p2").exists()


def test_corrupt_png_is_named_and_empty_folder_is_an_error(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    (folder / "left" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nsource = "{folder}"\nprepared_dir = "{tmp_path / "p"}"\n[model]\nfamily = "dcgan"\n')
    out = run_cli("prepare", str(cfg))
    assert out.returncode == 2 and "broken.png" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "p").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg.write_text(cfg.read_text().replace(str(folder), str(empty)))
    out = run_cli("prepare", str(cfg))
    assert out.returncode == 2 and "no images found" in out.stderr and str(empty) in out.stderr


# ---------------------------------------------------------------- training
def test_vae_training_lowers_the_negative_elbo(tmp_path, shapes_npz):
    from aigc.config import load_config
    from aigc.train.loop import train

    run = train(load_config(image_config(tmp_path, shapes_npz, "vae", steps=40)), progress=False)
    rows = [r for r in metrics(run) if "train_loss" in r]
    first, last = np.mean([r["train_loss"] for r in rows[:3]]), np.mean([r["train_loss"] for r in rows[-3:]])
    assert last < 0.8 * first  # nats per image
    assert all(abs(-r["elbo"] - (r["recon"] + r["kl"])) < 1e-2 * abs(r["elbo"]) for r in rows)
    val = [r for r in metrics(run) if "val_elbo" in r][-1]
    assert val["val_elbo"] > -first
    assert (run / "samples" / "step-000040.png").is_file() and (run / "loss.png").is_file()


@pytest.mark.parametrize("loss", ["hinge", "ns"])
def test_gan_steps_teach_the_discriminator_and_move_the_generator(tmp_path, shapes_npz, loss):
    from aigc.config import load_config
    from aigc.train.loop import train

    run = train(load_config(image_config(tmp_path, shapes_npz, "dcgan", steps=30, loss=loss)), progress=False)
    rows = [r for r in metrics(run) if "d_loss" in r]
    assert len(rows) == 30 and all(np.isfinite([r["d_loss"], r["g_loss"]]).all() for r in rows)
    start = 2.0 if loss == "hinge" else 2 * np.log(2)  # D(x) = 0 everywhere at the start
    assert rows[0]["d_loss"] == pytest.approx(start, abs=0.2)
    late = rows[-10:]
    assert np.mean([r["d_real"] - r["d_fake"] for r in late]) > 0.1  # D separates real from fake
    assert np.mean([r["d_loss"] for r in late]) < start
    g0, g1 = [load_generator_weights(run, s) for s in (0, 30)]
    assert g0 is None or not torch.equal(g0, g1)


def load_generator_weights(run: Path, step: int):
    from safetensors.torch import load_file

    folder = run / "checkpoints" / f"step-{step:06d}"
    if not folder.is_dir():
        return None
    return load_file(str(folder / "model.safetensors"))["generator.fc.weight"]


def test_gan_resume_continues_exactly(tmp_path, shapes_npz):
    """Two optimizers and the EMA survive a checkpoint: 10 + 10 steps == 20 steps (constant lr, so that
    the shorter first run has the same schedule)."""
    from safetensors.torch import load_file

    from aigc.config import load_config
    from aigc.train.loop import train
    from aigc.train.run_folder import resolve_resume_config

    a = tmp_path / "a"
    a.mkdir()
    cfg = load_config(image_config(a, shapes_npz, "dcgan", steps=20, conditional=True),
                      ["--train.checkpoint_interval=10", "--train.min_lr=2e-3"])
    full = train(cfg, progress=False)
    b = tmp_path / "b"
    b.mkdir()
    cfg = load_config(image_config(b, shapes_npz, "dcgan", steps=20, conditional=True),
                      ["--train.checkpoint_interval=10", "--train.min_lr=2e-3", "--train.max_steps=10"])
    half = train(cfg, progress=False)
    train(resolve_resume_config(half, ["--train.max_steps=20"]), resume=True, progress=False)
    wa = load_file(str(full / "checkpoints" / "step-000020" / "model.safetensors"))
    wb = load_file(str(half / "checkpoints" / "step-000020" / "model.safetensors"))
    assert wa.keys() == wb.keys() and any(k.startswith("ema.") for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- sampling and provenance
def test_sample_grid_carries_provenance_and_is_reproducible(tmp_path, shapes_npz):
    cfg = image_config(tmp_path, shapes_npz, "dcgan", steps=4, conditional=True)
    assert run_cli("train", str(cfg), "--quiet").returncode == 0
    run = tmp_path / "run"
    for name in ("a.png", "b.png"):
        out = run_cli("sample", str(run), "--n", "12", "--seed", "7", "--class", "1",
                      "--out", str(tmp_path / name))
        assert out.returncode == 0, out.stderr
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.tobytes() == b.tobytes() and a.text == b.text  # same pixels and chunks (each C2PA manifest is new)
    img = Image.open(tmp_path / "a.png")
    assert img.text["Software"].startswith("generated by aigc")
    prov = json.loads(img.text["aigc:provenance"])
    assert prov["seed"] == 7 and prov["step"] == 4 and prov["parameters"]["class"] == "1"
    assert prov["family"] == "dcgan" and "checkpoints/step-000004" in prov["model"]
    # an unknown class lists the known ones; nothing is written
    out = run_cli("sample", str(run), "--class", "Sneakers", "--out", str(tmp_path / "c.png"))
    assert out.returncode == 2 and "known: 0, 1" in out.stderr and not (tmp_path / "c.png").exists()


def test_vae_reconstruct_and_interpolate_strip(tmp_path, shapes_npz):
    cfg = image_config(tmp_path, shapes_npz, "vae", steps=4)
    assert run_cli("train", str(cfg), "--quiet").returncode == 0
    x, _ = shapes_dataset(2)
    for i in range(2):
        Image.fromarray(x[i]).save(tmp_path / f"in{i}.png")
    out = run_cli("sample", str(tmp_path / "run"), "--interpolate", str(tmp_path / "in0.png"),
                  str(tmp_path / "in1.png"), "--steps", "5", "--out", str(tmp_path / "strip.png"))
    assert out.returncode == 0, out.stderr
    strip = Image.open(tmp_path / "strip.png")
    assert strip.size == (7 * 30 + 2, 32)  # A, five decoded, B; 28 px + 2 px padding each
    assert json.loads(strip.text["aigc:parameters"])["steps"] == 5
    out = run_cli("sample", str(tmp_path / "run"), "--reconstruct", str(tmp_path / "in0.png"),
                  str(tmp_path / "in1.png"), "--out", str(tmp_path / "rec.png"))
    assert out.returncode == 0 and Image.open(tmp_path / "rec.png").size == (2 * 30 + 2, 2 * 30 + 2)


# ---------------------------------------------------------------- Fashion-MNIST and the shipped classifier
def test_shipped_classifier_is_small_and_accurate():
    from aigc.evaluate.classifier import SHIPPED, classifier_info

    assert (SHIPPED / "model.safetensors").stat().st_size < 2 * 1024 * 1024
    assert classifier_info()["test_accuracy"] > 0.88


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian dataset-fashion-mnist not installed (make test installs it)")
def test_conditional_samples_are_the_requested_class(tmp_path):
    """A conditional DCGAN trained briefly: the shipped classifier recognises the class asked for."""
    import aigc
    from aigc.config import load_config
    from aigc.evaluate.classifier import classify
    from aigc.train.loop import train

    cfg = load_config(Path(__file__).parent.parent / "configs" / "fashion-dcgan.toml",
                      [f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=400", "--train.max_minutes=0",
                       "--train.eval_interval=400", "--train.checkpoint_interval=400", f"--train.threads={CORES}"])
    model = aigc.load(train(cfg, progress=False))
    for name in ("Trouser", "Sneaker", "Bag"):
        _, pred = classify(model.generate(100, name, seed=0))
        share = (pred == model.class_index(name)).float().mean().item()
        assert share > 0.3, (name, share)  # chance is 0.1


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian dataset-fashion-mnist not installed (make test installs it)")
def test_eval_prints_named_feature_space_and_reference_rows(tmp_path):
    cfg = Path(__file__).parent.parent / "configs" / "fashion-vae.toml"
    run = tmp_path / "run"
    out = run_cli("train", str(cfg), f"--train.out_dir={run}", "--train.max_steps=20", "--train.max_minutes=0",
                  "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = run_cli("eval", str(run), "--images", "500", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "FD (fmnist-classifier features)" in out.stdout and "FID" not in out.stdout
    res = json.loads((run / "eval.json").read_text())
    rows = res["rows"]
    floor, noise, model = (rows["real train vs real test (floor)"], rows["uniform noise (ceiling)"], rows["model"])
    assert floor["fd"] < model["fd"] < noise["fd"] and floor["kid"] < model["kid"] < noise["kid"]
    assert floor["precision"] > 0.5 and floor["recall"] > 0.5 and noise["recall"] < 0.05
    floor_line = next(line for line in out.stdout.splitlines() if line.startswith("real train vs real test"))
    spread = floor_line.split("±")[1].split()[0]  # two significant digits however small, never "0.0000"
    assert float(spread) == pytest.approx(floor["kid_std"], rel=0.06) and float(spread) > 0


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_models_are_sized_for_28_32_and_64_pixels(size, channels):
    from aigc.models.gan import DCGAN, DCGANConfig
    from aigc.models.vae import VAE, VAEConfig

    y = torch.tensor([0, 2])
    gan = DCGAN(DCGANConfig(image_size=size, channels=channels, g_width=8, d_width=8, conditional=True, n_classes=3))
    x = gan.generate(2, y, torch.Generator().manual_seed(0))
    assert x.shape == (2, channels, size, size) and x.abs().max() <= 1
    assert gan.discriminator(x, y).shape == (2,)
    vae = VAE(VAEConfig(image_size=size, channels=channels, width=8, decoder="gaussian"))
    out, mu, logvar = vae(x)
    assert out.shape == x.shape and mu.shape == (2, vae.config.z_dim)
    recon, kl = vae.loss_terms(x, out, mu, logvar)
    assert recon.shape == kl.shape == (2,) and (kl >= 0).all()


def test_bad_arrays_and_corrupt_gzip_are_one_line_errors(tmp_path):
    x, y = shapes_dataset(20)
    # a gzip stream with a flipped byte inside
    raw = bytearray(write_idx(tmp_path / "train-images-idx3-ubyte.gz", x).read_bytes())
    raw[30] ^= 0xFF
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(bytes(raw))
    out = run_cli("prepare", "--source", str(tmp_path), "--out", str(tmp_path / "p1"), "--quiet")
    assert out.returncode == 2 and "train-images-idx3-ubyte.gz" in out.stderr and "Traceback" not in out.stderr
    np.savez(tmp_path / "neg.npz", images=x, labels=y - 1)
    np.savez(tmp_path / "obj.npz", images=np.array([None, 1], dtype=object))
    for name, needle in (("neg.npz", "negative"), ("obj.npz", "obj.npz")):
        out = run_cli("prepare", "--source", str(tmp_path / name), "--out", str(tmp_path / "p2"), "--quiet")
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert not (tmp_path / "p2").exists()
    np.savez(tmp_path / "ok.npz", images=x, labels=y)  # recognised as images without a config
    out = run_cli("prepare", "--source", str(tmp_path / "ok.npz"), "--out", str(tmp_path / "p3"), "--quiet")
    assert out.returncode == 0 and "1x28x28 images, 2 classes" in out.stdout, out.stderr


def test_train_log_tensorboard_writes_the_metrics_and_grids_and_a_resume_replaces_what_followed(tmp_path, shapes_npz):
    """train.log = ["tensorboard"]: TensorBoard's own reader finds every metrics.jsonl number and the grids."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aigc.config import load_config
    from aigc.train.loop import train

    cfg = image_config(tmp_path, shapes_npz, "dcgan", steps=4)
    run = train(load_config(cfg, ["--train.log=['tensorboard']"]), progress=False)
    train(load_config(cfg, ["--train.log=['tensorboard']", "--train.max_steps=6", "--train.checkpoint_interval=2"]),
          resume=True, progress=False)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    rows = metrics(run)
    train_rows = [r for r in rows if "d_loss" in r]
    logged = events.Scalars("train/d_loss")
    assert [e.step for e in logged] == [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in logged] == pytest.approx([r["d_loss"] for r in train_rows], rel=1e-6)
    assert {"train/g_loss", "train/lr", "val/fd"} <= set(events.Tags()["scalars"])
    assert sorted({e.step for e in events.Images("samples")}) == [4, 6]
    with pytest.raises(AigcError, match=r"train.log = \['wandb'\]: expected a list of loggers"):
        load_config(cfg, ["--train.log=['wandb']"])
