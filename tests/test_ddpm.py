"""Diffusion (family ddpm): the scheduler contract every sampler shares, classifier-free guidance,
EMA resume, per-sample seeds, inpainting, training, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import aigc
from aigc.errors import AigcError
from aigc.generate.diffusion import Condition, denoise, guided
from aigc.generate.schedulers import SAMPLERS, NoiseSchedule, make_sampler
from aigc.models.ddpm import DDPM, DDPMConfig
from aigc.train import objectives

from conftest import CORES, T, ddpm_config, run_cli
from test_images import shapes_dataset



def tiny(conditioning: str = "class", **kw) -> DDPM:
    torch.manual_seed(0)
    classes = ["a", "b"] if conditioning == "class" else []
    cfg = DDPMConfig(image_size=8, base_channels=8, channel_mults=[1, 2], blocks_per_level=1, heads=2, groups=4,
                     timesteps=T, conditioning=conditioning, n_classes=len(classes), classes=classes, **kw)
    return DDPM(cfg).eval()


# ---------------------------------------------------------------- the scheduler contract
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_add_noise_matches_the_closed_form_moments(kind):
    s = NoiseSchedule(1000, kind)
    x0 = torch.full((4000, 1, 8, 8), 0.5, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0, 250, 999):
        xt = s.add_noise(x0, noise, torch.full((len(x0),), t))
        a = float(s.alphas_cumprod[t])
        assert xt.mean().item() == pytest.approx(math.sqrt(a) * 0.5, abs=4e-3)
        assert xt.var().item() == pytest.approx(1 - a, rel=2e-2, abs=1e-5)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])  # strictly noisier with t


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_timesteps_are_valid_for_1_5_and_T_steps_and_end_clean(name, spacing):
    sampler = make_sampler(name, NoiseSchedule(T), "epsilon", spacing)
    for steps in (1, 5, T):
        ts = sampler.set_timesteps(steps)
        assert len(ts) == steps == len(set(ts))
        assert all(0 <= t < T for t in ts) and ts == sorted(ts, reverse=True)
        assert sampler.prev(ts[-1]) is None  # the last step lands on the clean image (alpha_bar = 1)
        assert all(sampler.prev(a) == b for a, b in zip(ts, ts[1:]))
    assert sampler.set_timesteps(T) == list(range(T - 1, -1, -1))
    for bad in (0, T + 1, -3):
        with pytest.raises(AigcError, match="steps"):
            sampler.set_timesteps(bad)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_stepping_back_with_the_true_noise_recovers_x0(name, prediction):
    """Given the true epsilon (or v) at every step, every sampler lands on the clean image."""
    schedule = NoiseSchedule(T, "cosine")
    sampler = make_sampler(name, schedule, prediction)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand((3, 1, 8, 8), generator=gen, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    ts = sampler.set_timesteps(10)
    x = schedule.add_noise(x0, eps, torch.full((3,), ts[0]))
    for t in ts:
        tt = torch.full((3,), t)
        true_eps = (x - schedule.alphas_cumprod[t].sqrt() * x0) / (1 - schedule.alphas_cumprod[t]).sqrt()
        out = true_eps if prediction == "epsilon" else schedule.velocity(x0, true_eps, tt)
        x = sampler.step(out, t, x, torch.zeros_like(x))  # zero fresh noise: the posterior mean
    assert torch.allclose(x, x0, atol=1e-6)


def test_ddim_eta_0_is_deterministic_and_eta_1_is_not():
    model = tiny()
    cond = Condition(labels=torch.tensor([0, 1]))
    a = denoise(model, make_sampler("ddim", NoiseSchedule(T), "epsilon"), 4, [5, 6], cond)
    b = denoise(model, make_sampler("ddim", NoiseSchedule(T), "epsilon"), 4, [5, 6], cond)
    assert torch.equal(a, b)
    s = NoiseSchedule(T)
    x = torch.randn(2, 1, 8, 8)
    d0, d1 = make_sampler("ddim", s, "epsilon", eta=0.0), make_sampler("ddim", s, "epsilon", eta=1.0)
    d0.set_timesteps(5), d1.set_timesteps(5)
    out, t = torch.randn_like(x), d0.timesteps[0]
    assert torch.equal(d0.step(out, t, x, torch.randn_like(x)), d0.step(out, t, x, torch.randn_like(x)))
    assert not torch.equal(d1.step(out, t, x, torch.randn_like(x)), d1.step(out, t, x, torch.randn_like(x)))


def test_zero_terminal_snr_is_exact_and_refuses_epsilon_prediction():
    s = NoiseSchedule(T, "linear", zero_terminal_snr=True)
    assert s.alphas_cumprod[-1].item() == 0.0
    assert s.alphas_cumprod[0].item() == pytest.approx(float(NoiseSchedule(T).alphas_cumprod[0]))
    with pytest.raises(AigcError, match="v-prediction"):
        make_sampler("ddim", s, "epsilon")
    with pytest.raises(AigcError, match="prediction = 'v'"):
        DDPMConfig(zero_terminal_snr=True, prediction="epsilon").validate()
    model = tiny(prediction="v", zero_terminal_snr=True)  # samples from pure noise, every sampler finite
    for name in SAMPLERS:
        images = denoise(model, make_sampler(name, s, "v"), 3, [0], Condition(labels=torch.tensor([1])))
        assert torch.isfinite(images).all()


# ---------------------------------------------------------------- guidance and conditioning
def test_guidance_0_and_1_are_the_unconditional_and_conditional_predictions():
    model = tiny()
    x, t = torch.randn(2, 1, 8, 8), 40
    cond = Condition(labels=torch.tensor([0, 1]))
    ts = torch.full((2,), t)
    with torch.no_grad():
        u = model.net(x, ts, torch.tensor([-1, -1]))
        c = model.net(x, ts, torch.tensor([0, 1]))
        assert torch.allclose(guided(model.net, x, t, cond, 0.0), u, atol=1e-6)
        assert torch.allclose(guided(model.net, x, t, cond, 1.0), c, atol=1e-6)
        assert torch.allclose(guided(model.net, x, t, cond, 3.0), u + 3 * (c - u), atol=1e-5)
        # the null of sampling is the learned null row the training dropout uses
        emb, _, _ = model.net.condition(torch.tensor([-1]), None, x)
        assert torch.equal(emb[0], model.net.class_emb.weight[2])


def test_p_uncond_share_of_training_conditions_is_dropped_to_the_null():
    model = tiny(p_uncond=0.2)
    seen = []
    original = model.net.forward
    model.net.forward = lambda x, t, labels=None, tokens=None: (seen.append(labels), original(x, t, labels, tokens))[1]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        objectives.diffusion_loss(model, (torch.zeros(100, 1, 8, 8), torch.ones(100, dtype=torch.long)), gen)
    labels = torch.cat(seen)
    assert set(labels.tolist()) == {-1, 1}
    assert (labels == -1).float().mean().item() == pytest.approx(0.2, abs=0.03)


# ---------------------------------------------------------------- training, EMA, seeds, inpainting
def test_a_few_training_steps_lower_the_loss():
    model = tiny()
    model.train()
    x = torch.from_numpy(shapes_dataset(32)[0]).float()[:, None] / 127.5 - 1
    batch = (torch.nn.functional.interpolate(x, size=8, mode="area"), torch.arange(32) % 2)
    opt = torch.optim.AdamW(model.net.parameters(), lr=3e-3)

    def fixed_loss():
        return objectives.diffusion_loss(model, batch, torch.Generator().manual_seed(7))[0]

    before = fixed_loss().item()
    for i in range(40):
        loss, _ = objectives.diffusion_loss(model, batch, torch.Generator().manual_seed(i))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert fixed_loss().item() < 0.7 * before


def test_ema_resume_equals_an_uninterrupted_run(tmp_path, shapes, trained):
    cfg = ddpm_config(tmp_path, shapes, 3)
    assert run_cli("train", str(cfg), "--quiet").returncode == 0
    r = run_cli("train", str(cfg), "--resume", "--train.max_steps=6", "--quiet")
    assert r.returncode == 0, r.stderr
    a = load_file(tmp_path / "run" / "checkpoints" / "step-000006" / "model.safetensors")
    b = load_file(trained / "checkpoints" / "step-000006" / "model.safetensors")
    assert int(a["ema_updates"]) == 6 and any(k.startswith("ema.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_per_sample_seed_reproduces_one_image_of_a_batch(trained):
    model = aigc.load(trained)
    batch, seeds, names = model.diffuse(4, "1", seed=10)
    alone, seeds1, _ = model.diffuse(1, "1", seed=seeds[2])
    assert seeds == [10, 11, 12, 13] and names == ["1"] * 4
    # the same image up to float rounding: batched kernels may sum in another order (seen: 3e-7 on AVX2)
    assert torch.allclose(batch[2], alone[0], atol=1e-5) and not torch.allclose(batch[1], alone[0], atol=1e-2)


def test_inpainting_keeps_the_unmasked_pixels_exactly(trained, tmp_path):
    pixels = shapes_dataset(1)[0][0]
    Image.fromarray(pixels, "L").save(tmp_path / "in.png")
    mask = np.zeros((28, 28), np.uint8)
    mask[7:21, 7:21] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    r = run_cli("sample", str(trained), "--inpaint", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                "--n", "2", "--seed", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    grid = np.asarray(Image.open(out))
    for k in (1, 2):  # the input first, then the results (2 px padding)
        x0 = 2 + k * 30
        result = grid[2:30, x0:x0 + 28]
        assert np.array_equal(result[mask == 0], pixels[mask == 0])
        assert not np.array_equal(result[mask > 0], pixels[mask > 0])
    assert json.loads(Image.open(out).text["aigc:seeds"]) == [0, 1]


# ---------------------------------------------------------------- bad input
def test_bad_input_gets_one_line_errors(trained, tmp_path, capsys):
    from aigc.cli import main

    Image.new("L", (32, 32)).save(tmp_path / "mask32.png")
    Image.new("L", (28, 28), 100).save(tmp_path / "gray.png")
    Image.new("RGB", (28, 28), (200, 10, 10)).save(tmp_path / "red.png")
    out = str(tmp_path / "x.png")
    cases = [
        (["--prompt", "a spaceship"], "names none of this model's classes: 0, 1"),
        (["--inpaint", str(tmp_path / "gray.png"), "--mask", str(tmp_path / "mask32.png")], "expected 28x28"),
        (["--guidance-scale", "-1"], "guidance_scale = -1.0"),
        (["--steps", "0"], "steps = 0"),
        (["--steps", str(T + 1)], f"trained with {T} timesteps"),
        (["--sampler", "euler"], "unknown (known: ddpm, ddim, dpm++2m)"),
        (["--restore", str(tmp_path / "red.png")], "a colour image"),
        (["--mask", str(tmp_path / "gray.png")], "--mask goes with --inpaint"),
    ]
    for flags, message in cases:
        code = main(["sample", str(trained), *flags, "--out", out, "--threads", str(CORES)])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (flags, err)
        assert len(err.strip().splitlines()) == 1 and not Path(out).exists()


def test_the_image_route_takes_a_prompt_steps_guidance_and_seed(trained):
    import base64
    import io

    from fastapi.testclient import TestClient

    from aigc.serve.app import create_app

    client = TestClient(create_app({"diffusion": aigc.load(trained)}))
    body = {"model": "diffusion", "prompt": "1", "n": 2, "seed": 4, "steps": 3, "guidance_scale": 2.0,
            "sampler": "dpm++2m"}
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    pngs = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in r.json()["data"]]
    assert [json.loads(p.text["aigc:seed"]) for p in pngs] == [4, 5]
    assert json.loads(pngs[0].text["aigc:parameters"])["sampler"] == "dpm++2m"
    alone = client.post("/v1/images/generations", json={**body, "n": 1, "seed": 5}).json()["data"][0]
    again = np.asarray(Image.open(io.BytesIO(base64.b64decode(alone["b64_json"])))).astype(int)
    assert np.abs(np.asarray(pngs[1]).astype(int) - again).max() <= 1  # up to float rounding
    for bad, param in (({"steps": 0}, "steps"), ({"sampler": "euler"}, "sampler"), ({"guidance_scale": -2}, "guidance"),
                       ({"prompt": "a cat"}, "classes")):
        r = client.post("/v1/images/generations", json={**body, **bad})
        assert r.status_code == 400 and param in r.json()["error"]["message"], r.text
