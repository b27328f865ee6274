"""What a run reports: metrics JSONL, a loss-curve PNG, TensorBoard when installed.

``metrics.jsonl`` has one line per logged optimizer step. On resume the lines after the restored
step are dropped first, so the file of a resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from llavakit.io import atomic_write_jsonl, read_jsonl_log


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a line cut by a kill is left out (its step is redone)."""
    return [row for _, row in read_jsonl_log(path, "metrics")[0]]


class MetricsLog:
    """Append-only JSONL of step metrics (+ TensorBoard scalars), main process only."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        rows = read_metrics(self.path) if resume_step is not None else []
        kept = [r for r in rows if r.get("step", 0) <= (resume_step or 0)]
        atomic_write_jsonl(self.path, kept)  # a kill while rewriting loses nothing
        self._file = self.path.open("a", encoding="utf-8")
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=(resume_step or 0) + 1)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, row["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.writer is not None:
            self.writer.close()


def plot_loss(metrics_path: str | Path, out_path: str | Path, title: str = "training loss") -> Path | None:
    """Loss (and a smoothed trend) against the optimizer step, as a PNG; None without data."""
    rows = [r for r in read_metrics(metrics_path) if r.get("loss") is not None]  # None: no supervised token
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, losses, lw=0.8, alpha=0.45, label="loss")
    if len(losses) >= 10:
        k = max(2, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.6, label=f"mean of {k}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (token-weighted)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
