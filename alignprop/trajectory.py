"""Stored SDE trajectories: what GRPO and D3PO learn from, saved and replayed.

A :class:`Trajectory` is what :meth:`alignprop.sampler.KontextSampler.sample_sde` returns for a
batch: the latents entering every step (x_0 = the initial noise ... x_N = the clean latents),
the log-probability of each transition x_i -> x_{i+1} under the model that sampled it, the
schedule, each sample's noise seed and its Kontext conditioning tokens. Training replays it:
:func:`replay` recomputes the transitions' log-probs (and means, for a KL term) under the
current model, with grad when the caller wants it, without sampling again (GRPO's inner
epochs, D3PO's policy/reference ratio).

Files are safetensors (tensors + string metadata, nothing unpickled), written to a temporary
name and renamed. The text conditioning is not stored (T5 embeds are 4 MB per prompt at full
size): the prompts are, and the caller passes their embeds to :func:`replay`.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from common.cli import UserError

FORMAT = "kontext-alignprop trajectory"
VERSION = "1"
_TENSORS = ("latents", "log_probs", "timesteps", "sigmas", "seeds", "image_tokens")


class TrajectoryError(UserError):
    """A trajectory file that cannot be read back (missing, not ours, inconsistent)."""


@dataclass
class Trajectory:
    latents: torch.Tensor       # (B, N+1, L, C) model dtype: x_0 (noise) ... x_N (clean)
    log_probs: torch.Tensor     # (B, N) fp32: log p(x_{i+1} | x_i) under the sampling model
    timesteps: torch.Tensor     # (N,) the sampler's timesteps
    sigmas: torch.Tensor        # (N+1,) fp32 noise levels, sigmas[N] = 0
    seeds: torch.Tensor         # (B,) int64: each sample's noise seed
    image_tokens: torch.Tensor  # (B, L', C') packed Kontext input tokens
    prompts: list = field(default_factory=list)   # B instructions (or empty)
    noise_level: float = 0.0    # Flow-GRPO's a
    reduction: str = "mean"     # log-prob over latent dimensions: "mean" or "sum"

    def __post_init__(self) -> None:
        b, n1 = self.latents.shape[:2]
        checks = [(self.log_probs.shape == (b, n1 - 1), "log_probs", (b, n1 - 1)),
                  (self.timesteps.shape == (n1 - 1,), "timesteps", (n1 - 1,)),
                  (self.sigmas.shape == (n1,), "sigmas", (n1,)),
                  (self.seeds.shape == (b,), "seeds", (b,)),
                  (self.image_tokens.shape[0] == b, "image_tokens", f"({b}, ...)")]
        for ok, name, want in checks:
            if not ok:
                raise TrajectoryError(f"trajectory: {name} has shape "
                                      f"{tuple(getattr(self, name).shape)}, expected {want} for "
                                      f"latents {tuple(self.latents.shape)}")
        if self.prompts and len(self.prompts) != b:
            raise TrajectoryError(f"trajectory: {len(self.prompts)} prompts for {b} samples")

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.latents.shape[1] - 1

    def rows(self, index: Sequence[int] | torch.Tensor) -> "Trajectory":
        """The trajectories of the samples ``index`` (a mini-batch of a stored batch)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = idx.tolist()
        return Trajectory(self.latents[idx], self.log_probs[idx], self.timesteps, self.sigmas,
                          self.seeds[idx], self.image_tokens[idx],
                          [self.prompts[i] for i in pick] if self.prompts else [],
                          self.noise_level, self.reduction)

    @classmethod
    def cat(cls, parts: Sequence["Trajectory"]) -> "Trajectory":
        """The samples of several trajectories of one schedule, in order, as one batch."""
        first = parts[0]
        for t in parts[1:]:
            if (t.num_steps != first.num_steps or t.noise_level != first.noise_level
                    or t.reduction != first.reduction
                    or not torch.equal(t.sigmas.cpu(), first.sigmas.cpu())):
                raise TrajectoryError("cannot join trajectories of different schedules, noise "
                                      "levels or log-prob reductions")
        if any(bool(t.prompts) != bool(first.prompts) for t in parts):
            raise TrajectoryError("cannot join trajectories with and without prompts")
        return cls(torch.cat([t.latents for t in parts]), torch.cat([t.log_probs for t in parts]),
                   first.timesteps, first.sigmas, torch.cat([t.seeds for t in parts]),
                   torch.cat([t.image_tokens for t in parts]),
                   [p for t in parts for p in t.prompts], first.noise_level, first.reduction)

    def to(self, device) -> "Trajectory":
        return Trajectory(*(getattr(self, n).to(device) for n in _TENSORS), list(self.prompts),
                          self.noise_level, self.reduction)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (temporary name, then renamed); returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {n: getattr(self, n).detach().cpu().contiguous() for n in _TENSORS}
        meta = {"format": FORMAT, "version": VERSION, "prompts": json.dumps(list(self.prompts)),
                "noise_level": repr(float(self.noise_level)), "reduction": self.reduction}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise TrajectoryError(f"trajectory file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise TrajectoryError(f"{path} is not a trajectory file (format "
                                          f"{meta.get('format')!r})")
                if meta.get("version") != VERSION:
                    raise TrajectoryError(f"{path}: trajectory version {meta.get('version')!r}, "
                                          f"this version reads {VERSION}")
                missing = [n for n in _TENSORS if n not in f.keys()]
                if missing:
                    raise TrajectoryError(f"{path}: trajectory lacks {', '.join(missing)}")
                tensors = {n: f.get_tensor(n) for n in _TENSORS}
        except SafetensorError as exc:
            raise TrajectoryError(f"{path}: not a readable safetensors file ({exc})") from None
        try:
            prompts = json.loads(meta.get("prompts", "[]"))
            noise_level = float(meta.get("noise_level", "nan"))
        except ValueError as exc:
            raise TrajectoryError(f"{path}: bad trajectory metadata ({exc})") from None
        return cls(**tensors, prompts=prompts, noise_level=noise_level,
                   reduction=meta.get("reduction", "mean"))


# ------------------------------------------------------------------ replay
def replay(sampler, traj: Trajectory, text, steps: Sequence[int] | None = None,
           transformer=None) -> list:
    """Each stored transition of ``steps`` (default all) scored under the current model.

    ``sampler`` is the :class:`~alignprop.sampler.KontextSampler` (its schedule must be the
    trajectory's), ``text`` the prompts' PromptEmbeds (batch B), ``transformer`` an
    override (e.g. the reference). Returns one :class:`~alignprop.sampler.SdeStep` per step
    (``log_prob`` (B,), ``mean``, ``std``); grad follows the caller's grad mode.
    """
    if traj.num_steps != sampler.num_steps or not torch.allclose(
            traj.sigmas.float().cpu(), sampler.sigmas.float().cpu()):
        raise TrajectoryError(f"trajectory of {traj.num_steps} steps was sampled with another "
                              f"schedule than this sampler's ({sampler.num_steps} steps)")
    steps = range(traj.num_steps) if steps is None else steps
    device = traj.latents.device
    cond = sampler.condition(traj.image_tokens.to(device), text)
    return [sampler.sde_step(traj.latents[:, i], i, cond, traj.noise_level,
                             next_latents=traj.latents[:, i + 1], reduction=traj.reduction,
                             transformer=transformer) for i in steps]


def replay_log_probs(sampler, traj: Trajectory, text, steps: Sequence[int] | None = None,
                     transformer=None) -> torch.Tensor:
    """(B, len(steps)) log-probs of the stored transitions under the current model."""
    return torch.stack([s.log_prob for s in replay(sampler, traj, text, steps, transformer)], 1)


__all__ = ["Trajectory", "TrajectoryError", "replay", "replay_log_probs"]
