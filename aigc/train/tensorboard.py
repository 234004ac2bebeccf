"""TensorBoard event files of a run (``train.log = ["tensorboard"]``): every number of metrics.jsonl and
the sample grids; it knows the run folder and nothing of models or data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aigc.errors import AigcError

LOGGERS = ("tensorboard",)  # what train.log may name


class TensorBoardLog:
    """Writes ``RUN/tensorboard/`` with torch's ``SummaryWriter`` (the ``tensorboard`` package's format).

    Every numeric field of a training line of metrics.jsonl becomes the scalar ``train/<name>``, every
    ``val_<name>`` of an evaluation line ``val/<name>``, at that line's optimizer step; a sample grid PNG becomes
    the image ``samples``. A resumed run opens the folder with ``purge_step`` just after the checkpoint's
    step, so TensorBoard drops what the interrupted run logged after it, as metrics.jsonl is truncated.

    Args:
        run_dir: the run folder.
        start_step: the step training resumes from (0 for a new run).
    Raises:
        AigcError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, run_dir: Path, start_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise AigcError("train.log = ['tensorboard'] needs the tensorboard package: "
                            "pip install 'aigc[tensorboard]' (or pip install tensorboard)") from None
        self.folder = run_dir / "tensorboard"
        # events after the checkpoint's step are dropped, as truncate_metrics drops metrics.jsonl's lines
        self.writer = SummaryWriter(str(self.folder), purge_step=start_step + 1 if start_step else None)

    def scalars(self, row: dict) -> None:
        """One metrics.jsonl line ``{"step": int, name: number, ...}``."""
        step = int(row["step"])
        evaluation = any(name.startswith("val_") for name in row)
        for name, value in row.items():
            if name == "step" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if name.startswith("val_"):
                self.writer.add_scalar(f"val/{name[4:]}", value, step)
            elif not evaluation:  # an evaluation line's counters repeat the training line's
                self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()

    def image(self, path: Path, step: int) -> None:
        """The sample grid at ``path`` (a PNG the run wrote) as the image ``samples`` at ``step``."""
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image("samples", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
