"""Run logging: metrics.jsonl, image grids (input | output) and tracker plumbing."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch


def tracker_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flags as tracker hyper-parameters (tensorboard accepts only scalars and strings)."""
    out = {}
    for k, v in config.items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def check_tracker(log_with: str) -> str | None:
    """Accelerate ``log_with`` value for our flag; clear error when the package is missing."""
    if log_with == "none":
        return None
    module = {"tensorboard": "tensorboard", "wandb": "wandb"}[log_with]
    try:
        __import__(module)
    except ImportError:
        from .config import MissingDependencyError

        raise MissingDependencyError(f"--log_with {log_with} needs the {module!r} package: "
                           f"`pip install {module}` (or use --log_with tensorboard / none)") from None
    return log_with


class MetricsFile:
    """Appends one JSON object per logged step to ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step}
        for k, v in metrics.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN/inf
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def image_grid(columns: list[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Columns of (B,3,H,W) images -> one (3, B*(H+pad), C*(W+pad)) grid, rows = samples."""
    b, _, h, w = columns[0].shape
    grid = torch.ones(3, b * (h + pad) - pad, len(columns) * (w + pad) - pad)
    for c, col in enumerate(columns):
        for r in range(b):
            y, x = r * (h + pad), c * (w + pad)
            grid[:, y:y + h, x:x + w] = col[r].detach().float().cpu().clamp(0, 1)
    return grid


def log_image_grid(accelerator, grid: torch.Tensor, step: int, out_dir: str | Path,
                   tag: str = "input|output") -> Path:
    """Save the grid as PNG and send it to the active trackers (main process)."""
    from rewards.images import save_image

    path = Path(out_dir) / "images" / f"step_{step:06d}.png"
    save_image(grid, path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, grid, global_step=step)
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(path.as_posix())}, step=step)
    return path


def plot_reward_curve(rows: list[dict], path: str | Path, keys: tuple[str, ...] = ("reward",),
                      title: str = "reward during training") -> Path:
    """Line plot of metrics over steps (with a moving average) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, alpha=0.35, label=f"{key}")
        win = max(1, len(ys) // 10)
        smooth = [sum(ys[max(0, i - win + 1):i + 1]) / len(ys[max(0, i - win + 1):i + 1])
                  for i in range(len(ys))]
        ax.plot(xs, smooth, label=f"{key} (moving avg {win})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward (higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["MetricsFile", "read_metrics", "image_grid", "log_image_grid", "plot_reward_curve",
           "check_tracker", "tracker_config"]
