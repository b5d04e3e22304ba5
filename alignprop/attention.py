"""Attention kernels per sampler phase: the fastest for the no-grad steps, a safe one for grad.

The N-K no-grad Euler steps need only a forward pass; the K backpropagated steps need a
backward too. On an H200 cuDNN's attention failed in the backward pass of the full-size
transformer (torch 2.11: ``mha_graph.execute(...).is_good()``, docs/scale.md), so cuDNN stays
disabled globally (``setup_run``) and is switched on only inside the no-grad steps:

* no-grad steps: FlashAttention-3 through diffusers' attention backends when its kernel is
  installed locally (the ``flash_attn_interface`` module of FA3's Hopper build, found by
  diffusers) and the GPU is a Hopper (sm 9.x) -- diffusers' ``_flash_3`` backend is
  forward-only, which is all these steps need; otherwise torch SDPA with cuDNN first, then
  flash, then memory-efficient (then math, for inputs none of them takes);
* grad steps: torch SDPA with flash, then memory-efficient (what ran every measured case),
  then math.

Nothing changes on a CPU (no context is entered). ``describe()`` says what was chosen; the
trainer logs it once.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
from typing import Callable, Optional

import torch

_NULL = contextlib.nullcontext()


def _sdpa(names: list[str]) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of ``torch.nn.attention.sdpa_kernel`` contexts, in priority order."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [getattr(SDPBackend, n) for n in names]
    priority = "set_priority" in inspect.signature(sdpa_kernel).parameters
    if priority:
        return lambda: sdpa_kernel(backends, set_priority=True)
    return lambda: sdpa_kernel(backends)


def flash3_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """FlashAttention-3 usable through diffusers here: kernel installed, Hopper GPU, bf16/fp16.

    Feature-detected, never assumed: the module, diffusers' own check, the card.
    """
    device = torch.device(device)
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    if importlib.util.find_spec("flash_attn_interface") is None:
        return False
    try:
        from diffusers.models import attention_dispatch as dispatch
    except ImportError:
        return False
    if not getattr(dispatch, "_CAN_USE_FLASH_ATTN_3", False):
        return False
    return torch.cuda.get_device_capability(device)[0] == 9


class AttentionPhases:
    """Context factories for the no-grad and the grad sampler steps (no-ops by default)."""

    def __init__(self, nograd: Optional[Callable] = None, grad: Optional[Callable] = None,
                 names: tuple[str, str] = ("default", "default")):
        self._nograd, self._grad, self.names = nograd, grad, names

    def nograd(self):
        return self._nograd() if self._nograd is not None else _NULL

    def grad(self):
        return self._grad() if self._grad is not None else _NULL

    def describe(self) -> str:
        return f"attention: no-grad steps {self.names[0]}, grad steps {self.names[1]}"


def attention_phases(device: torch.device | str, dtype: torch.dtype) -> AttentionPhases:
    """The per-phase attention kernels for a run on ``device`` in ``dtype`` (see module doc)."""
    device = torch.device(device)
    if device.type != "cuda":
        return AttentionPhases()
    grad = _sdpa(["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"])
    if flash3_available(device, dtype):
        from diffusers.models.attention_dispatch import attention_backend

        return AttentionPhases(lambda: attention_backend("_flash_3"), grad,
                               ("FlashAttention-3 (diffusers _flash_3)", "SDPA flash/efficient"))
    return AttentionPhases(_sdpa(["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]),
                           grad, ("SDPA cuDNN/flash/efficient", "SDPA flash/efficient"))


__all__ = ["AttentionPhases", "attention_phases", "flash3_available"]
