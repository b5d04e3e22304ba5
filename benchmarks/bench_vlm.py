#!/usr/bin/env python
"""Cost of the InternVL reward: cached pmi_null + both orders in one forward vs the naive way.

Naive (what a straightforward implementation does per call): one forward per order of a
pair/triplet and one more for the neutral gray image of pmi_null, i.e. 2 extra forwards per
call for pair (1 extra for single-image tasks). Ours: the two orders share one batched forward
and the null forward runs once per (prompt, image sizes) and is cached.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/bench_vlm.py [--calls 20] [--batch 4]

Both ways give the same scores (checked). Runs on the built-in tiny model (CPU by default);
--model_id/--device/--dtype measure a real checkpoint on a GPU the same way.
"""
from __future__ import annotations

import argparse
import time

import torch

from rewards.vlm import make_internvl_reward
from rewards.vlm_prompts import TASKS
from common.cli import positive_int


def naive_score(fn, slots):
    """Same score as fn.score_slots, computed the naive way (no batching of orders, no cache)."""
    fn._null_cache.clear()
    orders = [list(slots)]
    if fn.task in ("pair", "triplet"):
        i, j = (0, 1) if fn.task == "pair" else (1, 2)
        sw = list(slots)
        sw[i], sw[j] = slots[j], slots[i]
        orders.append(sw)
    reads = []
    for order in orders:
        lp = fn._forward([fn._tiles(x) for x in order])                       # 1 forward per order
        reads.append(fn._readout(lp, [tuple(x.shape[-2:]) for x in order]))    # null: once a call
    if len(reads) == 1:
        return reads[0][0]
    return 0.5 * (reads[0][0] + 1.0 - reads[1][0])


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench(task, args):
    kw = {"reference": torch.rand(3, args.size, args.size)} if task == "triplet" else {}
    fn = make_internvl_reward(task, model_id=args.model_id, dtype=args.dtype, device=args.device,
                              calibration="pmi_null", **kw)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(fn.bundle.device)
    inputs = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(fn.bundle.device)
    slots = fn.slots_for(images, inputs)
    results = {}
    for name, call in (("ours", lambda: fn.score_slots(slots).scores),
                       ("naive", lambda: naive_score(fn, slots))):
        fn._null_cache.clear()
        with torch.no_grad():
            call()                                     # burn-in (and fills the cache for ours)
        fn._null_cache.clear()
        fn.num_forwards = 0
        sync(args.device)
        t0 = time.perf_counter()
        for _ in range(args.calls):
            images.requires_grad_(True)
            slots = fn.slots_for(images, inputs)
            score = call()
            score.sum().backward()                     # training cost: forward + backward
            images.grad = None
        sync(args.device)
        results[name] = ((time.perf_counter() - t0) / args.calls, fn.num_forwards / args.calls,
                         score.detach())
    torch.testing.assert_close(results["ours"][2], results["naive"][2], atol=1e-5, rtol=0)
    (t_o, f_o, _), (t_n, f_n, _) = results["ours"], results["naive"]
    print(f"| {task:8s} | {f_o:.2f} | {f_n:.2f} | {t_o * 1e3:7.1f} | {t_n * 1e3:7.1f} | "
          f"{t_n / t_o:.2f}x |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=positive_int, default=10, help="timed reward calls per variant")
    p.add_argument("--batch", type=positive_int, default=4, help="samples per call")
    p.add_argument("--size", type=positive_int, default=64, help="image side in pixels")
    p.add_argument("--model_id", default="tiny", help="InternVL -hf checkpoint or 'tiny'")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="float32 | bfloat16")
    p.add_argument("--tasks", default="single,pair,triplet", help="comma-separated tasks")
    args = p.parse_args()
    unknown = [t for t in args.tasks.split(",") if t.strip() not in TASKS]
    if unknown:
        p.error(f"--tasks: unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    torch.manual_seed(0)
    print(f"model={args.model_id} device={args.device} dtype={args.dtype} batch={args.batch} "
          f"size={args.size} calls={args.calls}, calibration=pmi_null, forward+backward per call")
    print("| task | forwards/call (ours) | forwards/call (naive) | ms/call (ours) | "
          "ms/call (naive) | naive/ours |")
    print("|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        bench(task.strip(), args)


if __name__ == "__main__":
    main()
