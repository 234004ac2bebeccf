"""Training objectives: functions ``(model, batch) -> (loss, logs)``.

The loop knows nothing of model families beyond these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy at every position, mean over tokens, in nats.

    Args:
        batch: inputs ``x`` and targets ``y``, each ``(B, T) int64``; ``y[:, t]`` is the token after ``x[:, t]``.
    Returns:
        scalar loss (float32) and logs ``{"loss": float}``.
    """
    x, y = batch
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
    return loss, {"loss": loss.item()}
