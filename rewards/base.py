"""The reward contract and the weighted composite the trainer optimises.

A reward is any callable ``fn(images, inputs, prompts) -> (scores, metrics)``:

* ``images``  -- generated images, float tensor (B, 3, H, W) in [0, 1]; the
  tensor that gradients flow back into.
* ``inputs``  -- the conditioning (input) images, same layout, or ``None``
  for rewards that do not compare with the input.
* ``prompts`` -- list of B edit instructions (may be ignored).
* ``scores``  -- tensor (B,), higher is better, differentiable w.r.t. ``images``
  unless the reward says otherwise (``differentiable = False`` on the callable and
  in the registry: a JPEG size, a program's verdict; only GRPO / D3PO learn from those).
* ``metrics`` -- batch means for logging: floats, or 0-dim detached tensors (a tensor stays
  on its device so that scoring never waits for the device; the trainer reads every metric
  of an optimizer step in one transfer, :func:`metrics_to_floats`).

Penalties are exposed as rewards by negation, so that every term of a
composite has the same sign convention.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from common.profiling import REWARD, phase

Metrics = dict[str, "float | torch.Tensor"]


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    """A metric: the detached fp32 mean of ``x``, left on its device (no host sync)."""
    return x.detach().float().mean()


_CALL_MEMO: contextvars.ContextVar = contextvars.ContextVar("reward_call_memo", default=None)


@contextlib.contextmanager
def shared_call():
    """Inside: rewards may share work on the same tensors (one composite call's scope).

    The VLM terms of a composite encode each distinct image once per call
    (:mod:`rewards.vlm`); the memo is dropped when the call ends.
    """
    if _CALL_MEMO.get() is not None:   # nested: the outer call's memo holds
        yield
        return
    token = _CALL_MEMO.set({})
    try:
        yield
    finally:
        _CALL_MEMO.reset(token)


def call_memo() -> dict | None:
    """The memo of the enclosing :func:`shared_call` (None outside one)."""
    return _CALL_MEMO.get()


def metrics_to_floats(metrics: dict) -> dict[str, float]:
    """Every metric as a Python float, with one device->host transfer per device.

    Tensor metrics are stacked per device and read with one ``tolist()``; floats pass through.
    """
    out: dict[str, float] = {}
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append((key, value))
        else:
            out[key] = float(value)
    for items in by_device.values():
        values = torch.stack([v.detach().double().reshape(()) for _, v in items]).tolist()
        out.update(zip((k for k, _ in items), values))
    return {k: out[k] for k in metrics}


@runtime_checkable
class Reward(Protocol):
    def __call__(
        self,
        images: torch.Tensor,
        inputs: torch.Tensor | None,
        prompts: Sequence[str] | None,
    ) -> tuple[torch.Tensor, Metrics]: ...


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise a clear error unless ``images`` follows the (B,3,H,W) [0,1] convention."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype}")


@dataclass
class RewardTerm:
    """One weighted term of a composite reward."""

    name: str
    weight: float
    fn: Reward
    # Free-form description of the options used to build it (logged with the run).
    options: dict = field(default_factory=dict)
    # False: the scores carry no gradient to the images (a JPEG size, a program's verdict);
    # only score-based methods (GRPO, D3PO) can learn from such a term.
    differentiable: bool = True


class CompositeReward:
    """Weighted sum of reward terms.

    ``__call__`` returns ``(total[B], metrics)`` where ``metrics`` holds, for every
    term ``t``: ``t`` (the unweighted batch-mean score), ``t/weighted`` and every
    metric the term itself reported under ``t/<key>``; plus ``reward`` (the mean
    total). Computed metrics are 0-dim tensors on the scores' device
    (:func:`metrics_to_floats` reads them). Non-finite term scores are reported in ``metrics`` and propagate into
    the total so that the caller (the trainer) can skip the step.
    """

    def __init__(self, terms: Sequence[RewardTerm]):
        if not terms:
            raise ValueError("CompositeReward needs at least one reward term")
        names = [t.name for t in terms]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate reward term names: {sorted(dup)}")
        self.terms = list(terms)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    @property
    def terms_without_gradient(self) -> list[str]:
        """Names of the terms whose scores carry no gradient to the images."""
        return [t.name for t in self.terms
                if not (t.differentiable and getattr(t.fn, "differentiable", True))]

    @property
    def differentiable(self) -> bool:
        """True when every term gives a gradient (what gradient-based methods need)."""
        return not self.terms_without_gradient

    def __call__(self, images, inputs=None, prompts=None):
        check_images(images)
        # terms share work on the same images (one vision pass each); a profiler range
        with shared_call(), phase(REWARD):
            return self._call(images, inputs, prompts)

    def _call(self, images, inputs, prompts):
        total = None
        metrics: Metrics = {}
        for term in self.terms:
            with phase(f"{REWARD}/{term.name}"):
                scores, info = term.fn(images, inputs, prompts)
            if scores.ndim != 1 or scores.shape[0] != images.shape[0]:
                raise ValueError(
                    f"reward term {term.name!r} returned shape {tuple(scores.shape)}, "
                    f"expected ({images.shape[0]},)"
                )
            scores = scores.float()
            weighted = term.weight * scores
            total = weighted if total is None else total + weighted
            # Metrics stay on the device (no sync per term): read once per optimizer step.
            mean = batch_mean(scores)
            metrics[term.name] = mean
            metrics[f"{term.name}/weighted"] = term.weight * mean.double()
            for key, value in info.items():
                metrics[f"{term.name}/{key}"] = value
        metrics["reward"] = batch_mean(total)
        metrics["reward_finite"] = torch.isfinite(metrics["reward"]).float()
        return total, metrics

    def describe(self) -> list[dict]:
        """JSON-able description of every term, saved with a run."""
        return [{"name": t.name, "weight": t.weight, **t.options,
                 **({} if t.differentiable else {"differentiable": False})} for t in self.terms]


class NotWeightless(NotImplementedError):
    """This reward cannot be built at its real size without weights (the message says why);
    ``--estimate`` then names it on its NOT COUNTED line."""


def as_reward(fn: Callable) -> Reward:
    """Identity helper that documents intent at factory return sites."""
    return fn
