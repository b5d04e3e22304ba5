"""Training methods side by side: same reward, data, seed and wall-clock budget for each.

    PYTHONPATH=. python benchmarks/bench_methods.py --budget_s 40 --model tiny-photo  # README
    PYTHONPATH=. python benchmarks/bench_methods.py                  # random-weight tiny, 45 s each
    PYTHONPATH=. python benchmarks/bench_methods.py --from_json outputs/bench_methods/bench_methods.json

Each method trains with alignprop/trainer.py (the real loop) in its own freshly spawned
process, one torch thread, until its budget runs out (the trainer's own graceful stop:
SIGTERM, checkpoint, exit), saving the LoRA every ``--eval_every`` steps. Then, for the
base model and every saved LoRA, it samples the full N-step chain (what a user gets at
inference, not the method's training proxy) on held-out photos with fixed noise and scores
it with the same reward. Reported per method:

* steps done in the budget and seconds per optimizer step;
* held-out reward of the base model and of the last LoRA, and the optimizer steps and
  training seconds each method took to first reach 90 % of the largest gain any method
  reached (when every method reaches the goal within the budget, the last reward does not
  rank them; this does);
* peak memory of the training steps: peak RSS above the RSS just before the first step
  (the high-water mark is reset there through /proc/self/clear_refs), CPU only;
* drift: RMS pixel difference between the LoRA's and the base model's outputs on the
  held-out photos (same input, noise, prompt), in [0,1] units.

Reward: the brightness anchor (weight 10, target 0.65, band 0), a goal any method can
reach, so the comparison is about how fast and how far from the base model. Training
photos: astronaut, coffee, chelsea, rocket; held out: camera, hubble_deep_field.
Writes a markdown table to stdout, ``bench_methods.json`` to --out_dir and the plot
(held-out reward vs training seconds) to --plot.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # bench_trainer: RSS helpers
from common.checks import check_paths  # noqa: E402
from common.cli import nonneg_int, positive_float, positive_int  # noqa: E402

VARIANTS = {  # name -> trainer flags (besides the common ones)
    "alignprop K=1": {"method": "alignprop", "backprop_steps": 1},
    "alignprop K=all": {"method": "alignprop", "backprop_steps": -1},
    "draft-lv (n=2)": {"method": "draft-lv"},
    "refl": {"method": "refl"},
    "imagerefl (alternate)": {"method": "imagerefl"},
}
TRAIN = ("astronaut", "coffee", "chelsea", "rocket")
HELD_OUT = ("camera", "hubble_deep_field")
PROMPT = "Make this photo brighter."


def _reward_flags():
    from alignprop.reward_flags import RewardFlags

    return RewardFlags(brightness_anchor_weight=10, brightness_target=0.65, brightness_band=0)


def _photos(root: Path):
    from common.photos import write_photos

    for group, names in (("train", TRAIN), ("held_out", HELD_OUT)):
        write_photos(root / group, names)


def _first_step_hook(budget_s: float):
    """Wrap trainer.run_method: before the first step, reset the RSS high-water mark and
    start the budget's clock (model building is not part of the budget)."""
    import alignprop.trainer as trainer

    from bench_trainer import rss_baseline_mib

    inner, state = trainer.run_method, {}

    def wrapped(*a, **k):
        if "base" not in state:
            state["base"], state["reset"] = rss_baseline_mib()
            # The trainer stops gracefully on SIGTERM (checkpoint at the step boundary).
            signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
            signal.setitimer(signal.ITIMER_REAL, budget_s)
        return inner(*a, **k)

    trainer.run_method = wrapped
    return state


def train_one(name: str, args, work: Path) -> dict:
    """Train one variant until the budget is spent (runs in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    from alignprop.config import TrainConfig
    from alignprop.trainer import train

    from bench_trainer import rss_peak_mib

    out = work / name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
    cfg = TrainConfig(pretrained_model=args.model, data_dir=str(work / "train"), prompt=PROMPT,
                      output_dir=str(out), image_height=args.size, image_width=args.size,
                      sample_num_steps=args.steps, train_batch_size=2,
                      train_learning_rate=args.lr, lora_rank=4,
                      lora_target_modules="attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,proj_out",
                      max_train_steps=100000, save_freq=args.eval_every,
                      checkpoints_total_limit=None, log_image_freq=0, log_with="none",
                      seed=args.seed, mixed_precision="no", **VARIANTS[name])
    mem = _first_step_hook(args.budget_s)
    t0 = time.perf_counter()
    result = train(cfg, _reward_flags())
    wall = time.perf_counter() - t0
    peak = rss_peak_mib() - mem.get("base", 0.0)
    seconds = []
    total = 0.0
    for h in result.history:
        total += h["train/sec_per_step"]
        seconds.append(total)
    return {"name": name, "out": str(out), "steps": result.global_step, "wall_s": wall,
            "train_s": total, "cum_seconds": seconds, "peak_mib": peak,
            "peak_reset": mem.get("reset", False)}


def evaluate_one(row: dict, args, work: Path) -> dict:
    """Held-out reward of the base model and of every saved LoRA; drift of the last one."""
    import torch

    torch.set_num_threads(1)
    from alignprop.config import TrainConfig
    from alignprop.data import ImageFolder, load_batch
    from alignprop.lora import add_lora, load_lora_into
    from alignprop.methods import base_model
    from alignprop.models import load_kontext_pipeline
    from alignprop.reward_flags import build_reward_from_flags
    from alignprop.sampler import KontextSampler, encode_prompts, stack_prompt_embeds

    pipe = load_kontext_pipeline(args.model)
    folder = ImageFolder(work / "held_out", args.size, args.size, PROMPT)
    inputs, prompts = load_batch(folder, [(i, i) for i in range(len(folder))])
    text = stack_prompt_embeds(encode_prompts(pipe, [PROMPT], "cpu", 512), prompts)
    cfg = TrainConfig(data_dir="x", lora_rank=4,
                      lora_target_modules="attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,proj_out")
    add_lora(pipe.transformer, 4, cfg.lora_alpha, cfg.target_modules(), 0.0)
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             args.size, args.size, args.steps)
    reward = build_reward_from_flags(_reward_flags())
    noise = sampler.initial_noise(len(inputs), torch.Generator().manual_seed(1234), "cpu")

    @torch.no_grad()
    def sample():
        return sampler.sample(inputs, text, noise=noise)

    with torch.no_grad(), base_model(pipe.transformer):
        base_images = sample()
        base_reward = reward(base_images, inputs, prompts)[0].mean().item()
    ckpts = sorted((Path(row["out"]) / "checkpoints").glob("checkpoint-*"))
    curve = [(0, 0.0, base_reward)]
    images = base_images
    for ck in ckpts:
        step = int(ck.name.split("-")[1])
        load_lora_into(pipe.transformer, ck)
        images = sample()
        curve.append((step, row["cum_seconds"][step - 1], reward(images, inputs, prompts)[0]
                      .mean().item()))
    drift = float(((images - base_images) ** 2).mean().sqrt())
    final = curve[-1]
    steps, secs = max(final[0], 1), max(final[1], 1e-9)
    return {**row, "curve": curve, "base_reward": base_reward, "final_reward": final[2],
            "gain_per_step": (final[2] - base_reward) / steps,
            "gain_per_s": (final[2] - base_reward) / secs, "drift_rms": drift,
            "evaluated_step": final[0]}


def _child(kind, name, args, work, queue):
    try:
        if kind == "train":
            queue.put(train_one(name, args, work))
        else:
            queue.put(evaluate_one(name, args, work))
    except BaseException as exc:  # report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _isolated(kind, payload, args, work):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(kind, payload, args, work, q))
    p.start()
    row = q.get()
    p.join()
    if "error" in row:
        raise RuntimeError(f"{kind} {payload if isinstance(payload, str) else payload['name']}: "
                           f"{row['error']}")
    return row


def plot(rows, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in rows:
        steps, secs, rew = zip(*r["curve"])
        ax[0].plot(secs, rew, marker="o", ms=3, label=r["name"])
        ax[1].plot(steps, rew, marker="o", ms=3, label=r["name"])
    ax[0].set_xlabel("training seconds (1 thread)")
    ax[1].set_xlabel("optimizer steps")
    for a in ax:
        a.set_ylabel("held-out reward (full sampling)")
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=8)
    fig.suptitle("Methods on the same reward, data, seed and time budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny', 'tiny-photo' or a local directory")
    ap.add_argument("--size", type=positive_int, default=64)
    ap.add_argument("--steps", type=positive_int, default=8, help="sampler steps N")
    ap.add_argument("--lr", type=positive_float, default=1e-2)
    ap.add_argument("--budget_s", type=positive_float, default=45.0, help="training seconds per method")
    ap.add_argument("--eval_every", type=positive_int, default=2)
    ap.add_argument("--seed", type=nonneg_int, default=0)
    ap.add_argument("--methods", default=",".join(VARIANTS))
    ap.add_argument("--out_dir", default="outputs/bench_methods")
    ap.add_argument("--plot", default="media/bench_methods.png")
    ap.add_argument("--from_json", default=None,
                    help="Print the table (and redraw the plot) of an earlier run's "
                         "bench_methods.json instead of training")
    args = ap.parse_args()
    unknown = [m for m in args.methods.split(",") if m not in VARIANTS]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.from_json:
        check_paths([("--from_json", "file", args.from_json)])
        rows = json.loads(Path(args.from_json).read_text())
        plot(rows, Path(args.plot))
        print(f"model {args.model}, {args.size} px, N={args.steps}, (from {args.from_json})")
        print_table(rows)
        return
    work = Path(args.out_dir).resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f"--out_dir {work} is not empty; give a new folder")
    _photos(work)
    rows = []
    for name in args.methods.split(","):
        trained = _isolated("train", name, args, work)
        rows.append(_isolated("eval", trained, args, work))
        print(f"done: {name} ({rows[-1]['steps']} steps)", file=sys.stderr)
    (work / "bench_methods.json").write_text(json.dumps(rows, indent=1))
    plot(rows, Path(args.plot))
    load = os.getloadavg()[0]
    print(f"model {args.model}, {args.size} px, N={args.steps}, batch 2, LoRA rank 4, lr {args.lr}, "
          f"budget {args.budget_s:.0f} s per method, 1 thread; load average at the end {load:.1f}")
    print_table(rows)


def time_to_target(rows, fraction: float = 0.9):
    """Per method, the first evaluated (step, seconds) whose held-out reward is within
    ``fraction`` of the largest gain any method reached by the end of its budget; None if
    never. When every method ends near the same reward, the budget hides speed; this does not.
    """
    base = rows[0]["base_reward"]
    target = base + fraction * max(r["final_reward"] - base for r in rows)
    out = []
    for r in rows:
        hit = next(((step, sec) for step, sec, rew in r["curve"] if step and rew >= target), None)
        out.append(hit)
    return target, out


def print_table(rows):
    target, hits = time_to_target(rows)
    print(f"(to 90 %: first evaluation at held-out reward >= {target:.4f}, 90 % of the largest "
          f"gain any method reached)")
    print("| method | steps in budget | s/step | held-out reward base -> last | steps to 90 % | "
          "s to 90 % | peak MiB | drift (RMS px) |")
    print("|---|---|---|---|---|---|---|---|")
    for r, hit in zip(rows, hits):
        to_steps, to_s = (str(hit[0]), f"{hit[1]:.1f}") if hit else ("-", "-")
        print(f"| {r['name']} | {r['steps']} | {r['train_s'] / max(r['steps'], 1):.2f} | "
              f"{r['base_reward']:.4f} -> {r['final_reward']:.4f} | {to_steps} | {to_s} | "
              f"{r['peak_mib']:.1f} | {r['drift_rms']:.4f} |")

if __name__ == "__main__":
    main()
