"""The feature network of image metrics: a small Fashion-MNIST classifier we train and ship.

No Inception weights can be had offline, so FD/KID/precision/recall use the
128-dimensional penultimate features of this CNN instead, and every number says so
("FD (fmnist-classifier features)"). The numbers are comparable between models
measured with the same shipped weights, not with published FID values.

Architecture (input ``(B, 1, 28, 28)`` float32 in [-1, 1])::

    conv3x3 1->32, BN, ReLU, maxpool   -> (B, 32, 14, 14)
    conv3x3 32->64, BN, ReLU, maxpool  -> (B, 64, 7, 7)
    conv3x3 64->128, BN, ReLU, maxpool -> (B, 128, 3, 3)
    flatten, linear 1152->128, ReLU    -> (B, 128)   the features
    dropout, linear 128->10            -> (B, 10)    class logits

Trained by ``scripts/train_fmnist_classifier.py``; its test accuracy and the exact
command are in ``fmnist-classifier/info.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from aigc.atomic import read_json
from aigc.errors import AigcError

SHIPPED = Path(__file__).parent / "fmnist-classifier"
FEATURE_SPACE = "fmnist-classifier features"


class FmnistClassifier(nn.Module):
    """CNN classifier for 1x28x28 images; :meth:`features` gives the 128-d penultimate layer."""

    def __init__(self, n_classes: int = 10, dropout: float = 0.3):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.conv = nn.Sequential(block(1, 32), block(32, 64), block(64, 128))
        self.fc = nn.Linear(128 * 3 * 3, 128)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(128, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [-1, 1] -> (B, 128) float32 features (after ReLU)."""
        return torch.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, n_classes) logits."""
        return self.head(self.drop(self.features(x)))


_CACHE: dict = {}


def load_classifier(device: str | torch.device = "cpu") -> FmnistClassifier:
    """The shipped classifier in eval mode.

    Raises:
        AigcError: the shipped weights are missing (a broken install).
    """
    key = str(device)
    if key not in _CACHE:
        weights = SHIPPED / "model.safetensors"
        if not weights.is_file():
            raise AigcError(f"{weights}: the shipped Fashion-MNIST classifier is missing; reinstall aigc or run "
                            "scripts/train_fmnist_classifier.py")
        model = FmnistClassifier()
        model.load_state_dict(load_file(str(weights)))
        _CACHE[key] = model.to(device).eval()
    return _CACHE[key]


def classifier_info() -> dict:
    """info.json of the shipped classifier: test accuracy, parameters, training command."""
    try:
        return read_json(SHIPPED / "info.json", dict)
    except AigcError:
        return {}


@torch.no_grad()
def classify(x: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, 128) float32`` and predicted classes ``(N,) int64`` of images ``(N, 1, 28, 28)`` in [-1, 1].

    Raises:
        AigcError: images of another shape (the classifier only sees 1x28x28).
    """
    if tuple(x.shape[1:]) != (1, 28, 28):
        raise AigcError(f"the {FEATURE_SPACE} need 1x28x28 images; got {tuple(x.shape[1:])}")
    model = load_classifier()
    feats, preds = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size].float().cpu())
        feats.append(f)
        preds.append(model.head(f).argmax(1))
    return torch.cat(feats), torch.cat(preds)
