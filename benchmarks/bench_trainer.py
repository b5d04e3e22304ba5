"""Seconds per training step and peak memory of the AlignProp step, by K and checkpointing.

    PYTHONPATH=. python benchmarks/bench_trainer.py              # tiny model, CPU (64x64)
    PYTHONPATH=. python benchmarks/bench_trainer.py --size 128   # tiny model, 128x128
    python benchmarks/bench_trainer.py --full_size               # random-weight full FLUX Kontext, 512x512, GPU

One "step" = :func:`alignprop.trainer.optimizer_step` on a run built by the trainer's own
:func:`alignprop.run.setup_run` (data, prompt encoding, LoRA, sampler, AdamW): sample (N Euler
steps, the last K with grad) + VAE decode + a differentiable reward (mean luminance) + backward
into the LoRA + clipping + AdamW step -- what training runs, minus logging. Time is split into
*backward* (``accelerator.backward`` + the optimizer step) and *forward* (the rest of the step:
data, sampling, decode, reward). Burn-in steps are not timed; CUDA is synchronised around the
timers.

Every (K, checkpointing) configuration runs in its own freshly spawned process, so
one configuration's allocations cannot hide another's. Peak memory:
``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak resident set size of
that process *above its baseline*, where the baseline is the RSS measured after the
model, LoRA and optimizer are built (the kernel's high-water mark is reset at that
point through /proc/self/clear_refs; without /proc, ru_maxrss is used instead).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # run from anywhere; full_size_step
from common.cli import nonneg_int, positive_int  # noqa: E402


# --------------------------------------------------------------------------- CPU memory
def _proc_status_kib(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_baseline_mib() -> tuple[float, bool]:
    """Current RSS (MiB) and whether the high-water mark could be reset to it."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5 = reset the peak RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    rss = _proc_status_kib("VmRSS")
    if rss is None:  # no /proc: only ru_maxrss (KiB on Linux), which cannot be reset
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024, reset


def rss_peak_mib() -> float:
    hwm = _proc_status_kib("VmHWM")
    return (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _luminance_reward(images, inputs, prompts):
    r = images.float().mean((1, 2, 3))
    return r, {"reward": r.detach().mean()}


def run(args, k: int, ckpt: bool) -> dict:
    """One configuration, in the current process (main() calls it in a fresh one)."""
    import tempfile

    import alignprop.models as kontext_models
    from alignprop.config import TrainConfig
    from alignprop.reward_flags import RewardFlags
    from alignprop.run import resume_run, setup_run
    from alignprop.trainer import optimizer_step
    from common.images import save_image

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    if args.full_size:  # random-weight FLUX.1 Kontext-dev (all real sizes), as full_size_step.py
        from full_size_step import random_kontext_pipeline

        device = torch.device("cuda" if cuda else "cpu")
        kontext_models.load_kontext_pipeline = (
            lambda *a, dtype=torch.float32, **kw: random_kontext_pipeline(device, dtype, False))
    tmp = Path(tempfile.mkdtemp())
    for i in range(args.batch):
        save_image(torch.rand(3, args.size, args.size), tmp / "data" / f"{i}.png")
    cfg = TrainConfig(
        pretrained_model="tiny", data_dir=str(tmp / "data"), output_dir=str(tmp / "out"),
        image_height=args.size, image_width=args.size, sample_num_steps=args.steps,
        backprop_steps=k, gradient_checkpointing=ckpt, train_batch_size=args.batch,
        max_sequence_length=args.text_len, lora_rank=args.rank,
        lora_target_modules="attn.to_q,attn.to_k,attn.to_v,attn.to_out.0",
        mixed_precision="bf16" if (args.full_size and cuda) else "no",
        log_with="none", save_freq=0, log_image_freq=0, seed=0)
    if not cuda:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    run_ = setup_run(cfg, RewardFlags(brightness_anchor_weight=1.0), reward_fn=_luminance_reward)
    resume_run(run_)
    device = run_.device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    timer = {"backward": 0.0}
    backward, opt_step = run_.accelerator.backward, run_.optimizer.step

    def timed(fn):
        def wrapped(*a, **kw):
            sync()
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            sync()
            timer["backward"] += time.perf_counter() - t0
            return out
        return wrapped

    run_.accelerator.backward, run_.optimizer.step = timed(backward), timed(opt_step)

    def step() -> tuple[float, float]:
        timer["backward"] = 0.0
        sync()
        t0 = time.perf_counter()
        optimizer_step(run_)
        sync()
        total = time.perf_counter() - t0
        return total - timer["backward"], timer["backward"]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        base_mib, reset = rss_baseline_mib()
    for _ in range(args.burn_in):
        step()
    fwd = bwd = 0.0
    for _ in range(args.iters):
        f, b = step()
        fwd, bwd = fwd + f, bwd + b
    row = {"K": k, "checkpointing": ckpt, "sec_per_step": (fwd + bwd) / args.iters,
           "forward_s": fwd / args.iters, "backward_s": bwd / args.iters, "device": str(device)}
    if device.type == "cuda":
        row["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        row["peak_mem_mib"] = round(rss_peak_mib() - base_mib, 1)  # above the baseline
        row["baseline_rss_mib"] = round(base_mib, 1)
        row["peak_reset"] = reset
    return row


def run_isolated(args, k: int, ckpt: bool) -> dict:
    """:func:`run` in a freshly spawned process (clean allocator, clean peak counters)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run, args, k, ckpt).result()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full_size", action="store_true",
                   help="Random-weight full-size FLUX Kontext transformer/VAE (needs a GPU).")
    p.add_argument("--cpu", action="store_true", help="Force CPU.")
    p.add_argument("--size", type=positive_int, default=None, help="Image side (default 64 tiny, 512 full).")
    p.add_argument("--steps", type=positive_int, default=None, help="Sampler steps N (default 8 tiny, 28 full).")
    p.add_argument("--batch", type=positive_int, default=1, help="Images per step.")
    p.add_argument("--rank", type=positive_int, default=16, help="LoRA rank.")
    p.add_argument("--text_len", type=positive_int, default=None, help="T5 tokens (default 32 tiny, 512 full).")
    p.add_argument("--burn_in", type=nonneg_int, default=1, help="Untimed steps first.")
    p.add_argument("--iters", type=positive_int, default=3, help="Timed steps.")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads in each run (default 1: on a shared CPU, OpenMP "
                        "threads waiting for a busy core made tiny-model steps 10-50x slower; "
                        "0 = torch's default, for a dedicated machine).")
    p.add_argument("--ks", default="1,2,all", help="Comma-separated K values ('all' = N).")
    p.add_argument("--json", default=None, help="Also write the results to this file.")
    args = p.parse_args()
    args.size = args.size or (512 if args.full_size else 64)
    args.steps = args.steps or (28 if args.full_size else 8)
    args.text_len = args.text_len or (512 if args.full_size else 32)
    for name in ("size", "steps", "batch", "rank", "text_len", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.burn_in < 0 or args.threads < 0:
        p.error("--burn_in and --threads must be >= 0")
    try:
        ks = [args.steps if k.strip() == "all" else int(k) for k in args.ks.split(",")]
    except ValueError:
        p.error(f"--ks: comma-separated integers or 'all', got {args.ks!r}")
    if any(not 1 <= k <= args.steps for k in ks):
        p.error(f"--ks values must be in [1, --steps={args.steps}] or 'all'")
    rows = []
    for ckpt in (False, True):
        for kk in ks:
            try:
                row = run_isolated(args, kk, ckpt)
            except torch.OutOfMemoryError:
                row = {"K": kk, "checkpointing": ckpt, "sec_per_step": None, "peak_mem_mib": "OOM"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    cpu = rows and rows[0].get("device") == "cpu"
    mem = "peak RSS above baseline (MiB)" if cpu else "peak CUDA mem (MiB)"
    print(f"\n| K | grad ckpt | s/step | forward s | backward s | {mem} |\n|---|---|---|---|---|---|")
    for r in rows:
        f = (lambda v: f"{v:.3f}" if v is not None else "-")
        print(f"| {r['K']} | {'yes' if r['checkpointing'] else 'no'} | {f(r['sec_per_step'])} | "
              f"{f(r.get('forward_s'))} | {f(r.get('backward_s'))} | {r['peak_mem_mib']} |")
    if cpu:
        print(f"baseline RSS after model build: {rows[0].get('baseline_rss_mib')} MiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
