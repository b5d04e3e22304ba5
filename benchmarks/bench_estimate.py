"""Check ``--estimate`` against a measured training step of the built-in tiny models (CPU).

For each configuration, one real optimizer step of the tiny FLUX Kontext + tiny InternVL
rewards runs on the CPU (fp32; AdamW warm from a first step, as the estimate assumes): the
trainer's own step (:func:`alignprop.run.setup_run` + :func:`alignprop.trainer.optimizer_step`).
Its peak memory is measured twice, independently of the estimator, on top of the bytes live
when the step starts (weights, LoRA, AdamW state: every storage of the models and the
optimizer, counted once):

* tensors -- the storages the step's ops create, alive until freed (a dispatch mode on the
  real tensors, written here): what the estimator models, and what a GPU's allocator holds
  for them;
* allocator -- torch.profiler's CPU allocator events: the tensors plus the private work
  buffers of CPU kernels. The CPU's convolution backward of the crispness floor's Sobel filter
  (an image resized to 512 px) takes 34 MB of such scratch at 64 px: a CPU artefact (cuDNN
  runs the same convolution with its own, small workspace), so the ratio is taken on tensors.

FLOPs are counted with torch's FlopCounterMode on the real step. The estimator traces the same
flags with fake tensors. Printed: estimated vs measured peak and FLOPs, and their ratio.

    PYTHONPATH=. python benchmarks/bench_estimate.py        # ~2 min on a quiet 2-core CPU

Figures in docs/scale.md come from this command.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CASES = [  # (name, extra training flags)
    ("64 px, K=1", ["--image_height", "64", "--image_width", "64", "--backprop_steps", "1"]),
    ("256 px, K=1", ["--image_height", "256", "--image_width", "256", "--backprop_steps", "1"]),
    ("256 px, K=2", ["--image_height", "256", "--image_width", "256", "--backprop_steps", "2"]),
    ("256 px, K=2, checkpointing", ["--image_height", "256", "--image_width", "256",
                                    "--backprop_steps", "2", "--gradient_checkpointing"]),
]
BASE = ["--pretrained_model", "tiny", "--internvl_model_id", "tiny", "--mixed_precision", "no",
        "--internvl_dtype", "float32",
        "--sample_num_steps", "4", "--lora_rank", "8", "--aesthetic_model_type", "internvl",
        "--similarity_backend", "internvl-content", "--log_with", "none"]


def _live_bytes(*objs) -> int:
    """Bytes of every distinct storage held by these modules / optimizer (params, buffers, state)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in seen and st.nbytes():
                seen.add(key)
                total += st.nbytes()

    for o in objs:
        if isinstance(o, torch.nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                add(t)
                add(t.grad)
        elif isinstance(o, torch.optim.Optimizer):
            for state in o.state.values():
                for t in state.values():
                    add(t)
    return total


class StorageCounter(TorchDispatchMode):
    """Bytes of the storages that ops create while it is on, alive until freed; their peak."""

    def __init__(self):
        super().__init__()
        self.live, self.total, self.peak = set(), 0, 0

    def _free(self, key, nbytes):
        self.live.discard(key)
        self.total -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if id(st) not in self.live:
                    self.live.add(id(st))
                    self.total += st.nbytes()
                    self.peak = max(self.peak, self.total)
                    weakref.finalize(st, self._free, id(st), st.nbytes())
        return out


def measured_step(argv: list[str]) -> tuple[int, int, float]:
    """(tensor peak bytes, allocator peak bytes, FLOPs) of one real optimizer step of the
    trainer with these flags.

    The run is built by the trainer's own :func:`alignprop.run.setup_run` and stepped by
    :func:`alignprop.trainer.optimizer_step`, so what is measured is what training runs.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from alignprop.config import parse_config
    from alignprop.run import resume_run, setup_run
    from alignprop.trainer import optimizer_step
    from rewards.internvl_model import clear_cache

    cfg, flags = parse_config(argv)
    torch.manual_seed(0)
    clear_cache()
    run = setup_run(cfg, flags)
    resume_run(run)                          # no checkpoint: starts the data stream at 0
    optimizer_step(run)                      # warm: AdamW state exists, as in the estimate
    gc.collect()
    reward = run.reward_fn
    vlm_models = {id(m): m for t in getattr(reward, "terms", [])
                  for m in [getattr(getattr(t.fn, "bundle", None), "model", None)] if m is not None}
    base = _live_bytes(run.transformer, run.sampler.vae, run.optimizer, *vlm_models.values())
    with StorageCounter() as counter:
        optimizer_step(run)
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer_step(run)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    cur = peak = 0
    for _, b in events:
        cur += b
        peak = max(peak, cur)
    with FlopCounterMode(display=False) as fc:
        optimizer_step(run)
    run.accelerator.end_training()
    return base + counter.peak, base + peak, float(fc.get_total_flops())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="all", help="comma-separated case numbers (0-based) or all")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from alignprop.config import parse_config
    from alignprop.estimate import estimate_training

    data = tempfile.mkdtemp()
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 90, 60)).save(os.path.join(data, "a.png"))
    out_root = tempfile.mkdtemp()
    try:
        picks = (range(len(CASES)) if args.cases == "all"
                 else [int(c) for c in args.cases.split(",")])
        [CASES[i] for i in picks]
    except (ValueError, IndexError):
        p.error(f"--cases: comma-separated numbers in 0..{len(CASES) - 1}, or all; got "
                f"{args.cases!r}")
    print(f"{'case':<30} {'estimated MB':>13} {'tensors MB':>11} {'ratio':>6} "
          f"{'allocator MB':>13} {'est. GFLOP':>11} {'meas. GFLOP':>12} {'ratio':>6}")
    rows = []
    for i in picks:
        name, extra = CASES[i]
        argv_i = BASE + ["--data_dir", data, "--output_dir", os.path.join(out_root, str(i)),
                         "--save_freq", "0", "--log_image_freq", "0"] + extra
        est = estimate_training(*parse_config(argv_i))
        peak, allocator, flops = measured_step(argv_i)
        ratio, fratio = est.peak_bytes / peak, est.total_flops / flops
        rows.append((name, est.peak_bytes, peak, ratio, est.total_flops, flops, fratio))
        print(f"{name:<30} {est.peak_bytes / 1e6:13.2f} {peak / 1e6:11.2f} {ratio:6.3f} "
              f"{allocator / 1e6:13.2f} {est.total_flops / 1e9:11.3f} {flops / 1e9:12.3f} "
              f"{fratio:6.3f}", flush=True)
    worst = max(abs(r[3] - 1) for r in rows)
    print(f"worst memory deviation (estimate vs tensors): {worst:.1%}")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
