"""Sample-quality metrics for images, computed in a named feature space.

- Fréchet distance (Heusel et al. 2017): ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``
  between Gaussians fitted to two feature sets. With Inception features this is
  "FID"; we have no Inception weights offline, so ours is always named with its
  features (e.g. "FD (fmnist-classifier features)").
- Kernel inception distance (Binkowski et al. 2018): the unbiased estimate of the
  squared MMD with the kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random
  subsets (100 by default, of up to 1000 samples each).
- Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is
  the union of balls around its points with the radius to their k-th nearest
  neighbour (k = 3); precision is the share of generated samples inside the real
  manifold, recall the share of real samples inside the generated one.

All functions take features ``(N, D)`` (torch or numpy) and return Python floats.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from tqdm import tqdm

from aigc.errors import AigcError
from aigc.evaluate.classifier import FEATURE_SPACE, classifier_info, classify
from aigc.generate.images import sample_diffusion


def _np(x) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (Dowson & Landau 1982; Heusel et al. 2017).

    ``Tr((S1 S2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)``, which has the same spectrum.
    """
    mu1, mu2, cov1, cov2 = _np(mu1), _np(mu2), _np(cov1), _np(cov2)
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s1_half @ cov2 @ s1_half
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def frechet_distance_features(real, fake) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets ``(N, D)``.

    Warns (``UserWarning``) when either set has fewer samples than feature dimensions: its
    covariance is then singular and the distance biased upwards and unstable (Chong & Forsyth
    2020 measure the bias of FID at small N).
    """
    a, b = _np(real), _np(fake)
    for name, x in (("real", a), ("generated", b)):
        if len(x) < x.shape[1]:
            warnings.warn(f"FD from {len(x)} {name} samples in {x.shape[1]} feature dimensions: fewer samples than "
                          "dimensions give a singular covariance and a biased, unstable distance; use at least "
                          f"{x.shape[1]}", stacklevel=2)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def kernel_distance(real, fake, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over ``subsets`` of the unbiased MMD^2 with a cubic polynomial kernel.

    Each subset draws ``min(subset_size, len(real), len(fake))`` samples from each set without
    replacement (Binkowski et al. 2018). Identical distributions give values near 0 (and can be
    slightly negative: the estimator is unbiased).
    """
    a, b = _np(real), _np(fake)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _kth_radius(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row: ``(N,)``."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)  # (c, N)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each point: does some ball (centre, radius) contain it? ``(N,) bool``."""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centres)  # (c, M)
        out.append((d <= radii[None]).any(dim=1))
    return torch.cat(out)


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls; each in [0, 1]."""
    a = torch.as_tensor(_np(real))
    b = torch.as_tensor(_np(fake))
    if len(a) <= k or len(b) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} samples in each set")
    precision = _inside(b, a, _kth_radius(a, k)).double().mean().item()
    recall = _inside(a, b, _kth_radius(b, k)).double().mean().item()
    return precision, recall


def all_metrics(real, fake, k: int = 3, kid_subsets: int = 100, seed: int = 0) -> dict:
    """FD, KID (mean, std), precision and recall between two feature sets."""
    kid, kid_std = kernel_distance(real, fake, subsets=kid_subsets, seed=seed)
    precision, recall = precision_recall(real, fake, k)
    return {"fd": frechet_distance_features(real, fake), "kid": kid, "kid_std": kid_std,
            "precision": precision, "recall": recall}


def evaluate_image_model(model, data, n: int = 10000, seed: int = 0, kid_subsets: int = 100,
                         progress: bool = True) -> dict:
    """Score an :class:`~aigc.api.ImageModel` against the val (test) split of ``data`` in classifier features.

    Rows: the model (``n`` samples; a conditional model samples every class equally), the
    floor (real train images vs real test images) and the ceiling (uniform noise vs test).
    For a conditional model also the classifier's accuracy on its samples, per class.

    Raises:
        AigcError: images other than 1x28x28 grayscale (the classifier's input).
    """
    if data.shape != (1, 28, 28):
        raise AigcError(f"{data.folder}: the {FEATURE_SPACE} are defined for 1x28x28 grayscale images; "
                        f"this data is {'x'.join(map(str, data.shape))}")
    gen = torch.Generator().manual_seed(seed)
    n_val = len(data.images["val"])
    if n_val < 10:
        raise AigcError(f"{data.folder}: {n_val} held-out image(s); the metrics need at least 10 (raise "
                        "data.val_fraction or use a source with a test split)")
    n_real = min(n, n_val)
    real_x, _ = data.tensors("val", torch.randperm(n_val, generator=gen)[:n_real].numpy())
    train_x, _ = data.tensors("train", torch.randperm(len(data.images["train"]), generator=gen)[:n_real].numpy())
    bar = tqdm(total=4, desc="eval", unit="set", disable=not progress)
    real_f, _ = classify(real_x)
    bar.update(1)
    labels = None
    if model.classes:
        labels = torch.arange(n) % len(model.classes)
    fakes = []
    for i in range(0, n, 500):  # generate in chunks: bounded memory
        chunk = None if labels is None else labels[i:i + 500].to(model.device)
        if model.family == "ddpm":  # the model's sampler settings; image k has seed `seed + k`
            seeds = [seed + k for k in range(i, min(i + 500, n))]
            fakes.append(sample_diffusion(model.model, model.sample_defaults, seeds, chunk, progress=progress))
        else:
            fakes.append(model.model.generate(min(500, n - i), chunk, gen).cpu())
    fake_f, fake_pred = classify(torch.cat(fakes))
    bar.update(1)
    train_f, _ = classify(train_x)
    bar.update(1)
    noise_f, _ = classify(torch.rand(n_real, 1, 28, 28, generator=gen) * 2 - 1)
    bar.update(1)
    bar.close()
    rows = {"model": all_metrics(real_f, fake_f, kid_subsets=kid_subsets, seed=seed),
            "real train vs real test (floor)": all_metrics(real_f, train_f, kid_subsets=kid_subsets, seed=seed),
            "uniform noise (ceiling)": all_metrics(real_f, noise_f, kid_subsets=kid_subsets, seed=seed)}
    out = {"feature_space": FEATURE_SPACE, "classifier_test_accuracy": classifier_info().get("test_accuracy"),
           "samples": n, "real_samples": n_real, "seed": seed, "kid_subsets": kid_subsets, "precision_recall_k": 3,
           "rows": rows}
    if labels is not None:
        per_class = {}
        for k, name in enumerate(model.classes):
            mask = labels == k
            per_class[name] = (fake_pred[mask] == k).double().mean().item()
        out["class_accuracy"] = per_class
        out["class_accuracy_mean"] = float(np.mean(list(per_class.values())))
    return out
