"""Run logging: metrics.jsonl, image grids (input | output) and tracker plumbing."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from common.images import save_image

from .config import MissingDependencyError


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
        raise MissingDependencyError(f"--log_with {log_with} needs the {module!r} package: "
                           f"`pip install {module}` (or use --log_with tensorboard / none)") from None
    return log_with


_TRUE = {"1", "true", "yes", "on"}


def _wandb_key_configured(environ) -> bool:
    """True when wandb would find an API key without prompting (env var or a netrc entry).

    Only the presence of an entry is checked; the key itself is never read out.
    """
    if environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlsplit

    host = urlsplit(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    path = environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def configure_wandb(out_dir: str | Path, environ=None) -> dict[str, Any]:
    """Make ``--log_with wandb`` safe on offline / unattended machines.

    When ``WANDB_MODE`` is unset and either ``HF_HUB_OFFLINE`` is on or no API key is
    configured (no ``WANDB_API_KEY``, no netrc entry), set ``WANDB_MODE=offline``:
    otherwise ``wandb.init`` would stop at an interactive login prompt or retry the
    network. A mode the user set (online, offline, disabled) is always kept. Returns
    the ``wandb.init`` keyword arguments that put wandb's files under ``out_dir``
    (``<out_dir>/wandb/offline-run-*``; upload later with ``wandb sync``).
    """
    import logging

    environ = os.environ if environ is None else environ
    log = logging.getLogger("alignprop")
    if not environ.get("WANDB_MODE"):
        reason = None
        if environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
            reason = "HF_HUB_OFFLINE is set"
        elif not _wandb_key_configured(environ):
            reason = "no wandb API key is configured (WANDB_API_KEY or `wandb login`)"
        if reason:
            environ["WANDB_MODE"] = "offline"
            log.warning("--log_with wandb: %s, so WANDB_MODE=offline (no login prompt, no "
                        "network); the run is written to %s; upload it later with "
                        "`wandb sync %s/offline-run-*` or set WANDB_MODE=online to log live",
                        reason, Path(out_dir) / "wandb", Path(out_dir) / "wandb")
    return {"dir": str(out_dir)}


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


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop the rows of ``metrics.jsonl`` logged after ``step``; returns how many were dropped.

    Resuming from an older checkpoint repeats those steps, so without this the file
    would hold two rows for the same step. Rewritten through a temporary file (atomic);
    a torn last line (crash mid-write) is dropped too.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            dropped += 1
            continue
        if isinstance(row_step, int) and row_step > step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)
    return dropped


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


__all__ = ["MetricsFile", "read_metrics", "truncate_metrics", "image_grid", "log_image_grid", "plot_reward_curve",
           "check_tracker", "tracker_config", "configure_wandb"]
