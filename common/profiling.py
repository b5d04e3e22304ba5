"""Named ranges for profilers: where a training step spends its time.

``with phase("sampling/no-grad"):`` marks a range that torch.profiler records (a
``record_function`` event, with the device time of every kernel launched inside it) and, when
``ALIGNPROP_NVTX=1``, an NVTX range that Nsight Systems shows. With neither profiler running
it costs one flag check and returns a shared no-op context: the ranges stay in the library code
(sampler, methods, rewards, trainer) at no cost to training.

``benchmarks/full_size_step.py --profile`` prints the split of one optimizer step by these
ranges (:func:`phase_table`).
"""
from __future__ import annotations

import contextlib
import os

import torch

# Range names used by the library (one place, so the benchmark's table knows them).
NOGRAD = "sampling/no-grad"          # the N-K Euler steps without a graph
GRAD = "sampling/grad"               # the K Euler steps with a graph
VAE_DECODE = "vae/decode"
VAE_ENCODE = "vae/encode"
REWARD = "reward"                    # the whole composite; each term is "reward/<name>"
BACKWARD = "backward"
OPTIMIZER = "optimizer"              # clip + AdamW + schedule
METRICS = "metrics/read"             # the one device->host read per optimizer step
PHASES = (NOGRAD, GRAD, VAE_ENCODE, VAE_DECODE, REWARD, BACKWARD, OPTIMIZER, METRICS)

_NULL = contextlib.nullcontext()


def _nvtx_wanted() -> bool:
    return os.environ.get("ALIGNPROP_NVTX", "") not in ("", "0")


class _Range:
    __slots__ = ("name", "_rf", "_nvtx")

    def __init__(self, name: str, nvtx: bool):
        self.name, self._rf, self._nvtx = name, None, nvtx

    def __enter__(self):
        if torch.autograd._profiler_enabled():
            self._rf = torch.autograd.profiler.record_function(self.name)
            self._rf.__enter__()
        if self._nvtx:
            torch.cuda.nvtx.range_push(self.name)
        return self

    def __exit__(self, *exc):
        if self._nvtx:
            torch.cuda.nvtx.range_pop()
        if self._rf is not None:
            self._rf.__exit__(*exc)
        return False


def phase(name: str):
    """A profiler range named ``name``; a shared no-op when no profiler is recording."""
    nvtx = _nvtx_wanted() and torch.cuda.is_available()
    if nvtx or torch.autograd._profiler_enabled():
        return _Range(name, nvtx)
    return _NULL


def phase_table(events, steps: int = 1) -> list[dict]:
    """Rows {range, calls, cpu_s, device_s} per optimizer step of every :func:`phase` range.

    ``events``: ``torch.profiler.profile(...).key_averages()`` over ``steps`` optimizer steps.
    Device time is the sum of the kernels launched inside the range (children included); CPU
    time is the range's wall time on the host (with no syncs inside a step the host runs
    ahead of the device, so on a GPU the device column says where the time goes). Ranges nest
    (``reward`` holds ``reward/<term>``). The backward pass runs on autograd's own threads,
    outside the main thread's ranges: its kernels are summed into the extra row
    ``backward/autograd`` (activation recompute of gradient checkpointing included).
    """
    per = 1.0 / max(1, steps)
    rows, autograd = {}, [0, 0.0, 0.0]
    for ev in events:
        dev = getattr(ev, "device_time_total", None)
        if dev is None:
            dev = getattr(ev, "cuda_time_total", 0.0)
        if ev.key.startswith("autograd::engine::evaluate_function"):
            autograd[0] += ev.count
            autograd[1] += ev.cpu_time_total
            autograd[2] += dev
        elif ev.key in PHASES or ev.key.startswith(REWARD + "/"):
            rows[ev.key] = {"range": ev.key, "calls": ev.count * per,
                            "cpu_s": ev.cpu_time_total / 1e6 * per, "device_s": dev / 1e6 * per}
    if autograd[0]:
        rows["backward/autograd"] = {"range": "backward/autograd", "calls": autograd[0] * per,
                                     "cpu_s": autograd[1] / 1e6 * per,
                                     "device_s": autograd[2] / 1e6 * per}

    def order(name):
        top = REWARD if name.startswith(REWARD + "/") else name.split("/autograd")[0]
        return (PHASES.index(top) if top in PHASES else len(PHASES), name)
    return [rows[k] for k in sorted(rows, key=order)]


__all__ = ["phase", "phase_table", "PHASES", "NOGRAD", "GRAD", "VAE_DECODE", "VAE_ENCODE",
           "REWARD", "BACKWARD", "OPTIMIZER", "METRICS"]
