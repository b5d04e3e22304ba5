"""Learning from a judge: AlignProp vs GRPO vs D3PO, with and without the judge's gradient.

    nice -n 10 env PYTHONPATH=. python benchmarks/bench_judges.py --seeds 0,1,2 --budget_s 90
    PYTHONPATH=. python benchmarks/bench_judges.py --from_json outputs/bench_judges/bench_judges.json

Two settings on ``tiny-photo`` (64 px, 4 sampler steps), the same data, held-out photos and
time budget for every method:

(a) **a differentiable judge**: the brightness anchor (weight 10, target 0.65, band 0).
    AlignProp backpropagates it (K = 1); GRPO and D3PO use only its scores.
(b) **a judge with no gradient**: ``examples/judges/brightness_judge.py --levels 100`` given
    as ``--reward_command`` -- a program that writes each image's mean brightness in 100
    steps (a quantised score, like a person or a thresholded detector). GRPO and D3PO only
    (AlignProp refuses it).

Every (setting, method, seed) trains in a fresh process with one torch thread until its
budget of training seconds runs out (the budget starts at the first optimizer step: model
building is not counted; the trainer stops on SIGTERM at a step boundary), saving the LoRA
every ``--eval_every`` steps. Each saved LoRA then samples the held-out photos
(common/photos.py HELD_OUT: never in tiny-photo's pretraining) with the ODE sampler and
fixed noise, and the setting's judge scores them (for (b) the command itself). Reported
over ``--seeds``: the held-out score at the end of the budget (mean +- std over seeds), the
images each method sampled (AlignProp: one chain per training image; GRPO: G per input;
D3PO: 2 per pair), and the training seconds and images sampled until the mean curve first
reaches 90 % of the largest mean gain of the setting.

Training photos: hubble_deep_field, retina, camera, coins (tiny-photo's pretraining set);
held out: astronaut, chelsea, coffee, rocket.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
from common.cli import positive_float, positive_int  # noqa: E402

TRAIN = ("hubble_deep_field", "retina", "camera", "coins")
PROMPT = "Make this photo brighter."
SIZE, STEPS, SEQ, RANK = 64, 4, 64, 8
JUDGE = f"{sys.executable} {ROOT / 'examples' / 'judges' / 'brightness_judge.py'} --levels 100"
# name -> (trainer flags, images sampled per optimizer step)
METHODS = {
    "alignprop K=1": (dict(method="alignprop", backprop_steps=1, train_batch_size=4), 4),
    "grpo (G=4)": (dict(method="grpo", grpo_group_size=4, rl_inputs_per_round=2,
                        train_batch_size=8), 8),
    "d3po": (dict(method="d3po", rl_inputs_per_round=4, train_batch_size=4), 8),
}
SETTINGS = {"a": ("differentiable brightness anchor", tuple(METHODS)),
            "b": ("quantised brightness judge as --reward_command (no gradient)",
                  ("grpo (G=4)", "d3po"))}


def reward_flags(setting: str):
    from alignprop.reward_flags import RewardFlags

    if setting == "a":
        return RewardFlags(brightness_anchor_weight=10, brightness_target=0.65,
                           brightness_band=0)
    return RewardFlags(reward_command=JUDGE)


def _budget_hook(budget_s: float) -> None:
    """Start the budget at the first optimizer step (not counting model building)."""
    import alignprop.trainer as trainer

    inner, started = trainer.optimizer_step, []

    def wrapped(run):
        if not started:
            started.append(True)
            signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
            signal.setitimer(signal.ITIMER_REAL, budget_s)
        return inner(run)

    trainer.optimizer_step = wrapped


def train_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from alignprop.config import TrainConfig
    from alignprop.trainer import train

    flags, per_step = METHODS[job["method"]]
    out = Path(job["out"])
    cfg = TrainConfig(pretrained_model="tiny-photo", data_dir=job["train_dir"], prompt=PROMPT,
                      output_dir=str(out), image_height=SIZE, image_width=SIZE,
                      sample_num_steps=STEPS, max_sequence_length=SEQ, lora_rank=RANK,
                      train_learning_rate=job["lr"], max_train_steps=100000,
                      save_freq=job["eval_every"], log_image_freq=0, log_with="none",
                      mixed_precision="no", seed=job["seed"], **flags)
    _budget_hook(job["budget_s"])
    result = train(cfg, reward_flags(job["setting"]))
    seconds, total = [], 0.0
    for h in result.history:
        total += h["train/sec_per_step"]
        seconds.append(total)
    ties = [h.get("train/ties", h.get("train/zero_std_groups")) for h in result.history]
    ties = [t for t in ties if t is not None]
    return {**job, "steps": result.global_step, "train_s": total, "cum_seconds": seconds,
            "per_step_images": per_step, "no_signal": statistics.mean(ties) if ties else None}


def evaluate_one(row: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from alignprop.config import TrainConfig
    from alignprop.held_out import HeldOut
    from alignprop.reward_flags import build_reward_from_flags
    from common.photos import HELD_OUT_NAMES

    targets = TrainConfig(data_dir="x").target_modules()
    held = HeldOut("tiny-photo", HELD_OUT_NAMES, PROMPT, SIZE, STEPS, RANK, targets, SEQ)
    judge = build_reward_from_flags(reward_flags(row["setting"]))
    curve = [(0, 0.0, 0, held.score(None, judge).mean().item())]
    for ck in sorted((Path(row["out"]) / "checkpoints").glob("checkpoint-*")):
        step = int(ck.name.split("-")[1])
        curve.append((step, row["cum_seconds"][step - 1], step * row["per_step_images"],
                      held.score(ck, judge).mean().item()))
    return {**row, "curve": curve}


def _child(kind, job, queue):
    try:
        queue.put(train_one(job) if kind == "train" else evaluate_one(job))
    except BaseException as exc:  # report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _isolated(kind, job):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(kind, job, q))
    p.start()
    row = q.get()
    p.join()
    if "error" in row:
        raise RuntimeError(f"{kind} {job['setting']} {job['method']} seed {job['seed']}: "
                           f"{row['error']}")
    return row


# --------------------------------------------------------------------------- report
def _mean_curve(rows: list[dict]):
    """Mean over seeds at each evaluated step reached by every seed: (step, s, images, score)."""
    n = min(len(r["curve"]) for r in rows)
    return [tuple(statistics.mean(r["curve"][i][k] for r in rows) for k in range(4))
            for i in range(n)]


def summarize(rows: list[dict]) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    out = {}
    for setting in SETTINGS:
        keys = [k for k in groups if k[0] == setting]
        if not keys:
            continue
        curves = {k: _mean_curve(groups[k]) for k in keys}
        base = statistics.mean(curves[k][0][3] for k in keys)
        best = max(max(c[3] for c in curves[k]) for k in keys)
        target = base + 0.9 * (best - base)
        for k in keys:
            g = groups[k]
            finals = [r["curve"][-1][3] for r in g]
            hit = next((c for c in curves[k] if c[0] and c[3] >= target), None)
            no_signal = [r["no_signal"] for r in g if r["no_signal"] is not None]
            out[k] = {"seeds": len(g), "steps": statistics.mean(r["steps"] for r in g),
                      "s_per_step": statistics.mean(r["train_s"] / max(r["steps"], 1) for r in g),
                      "images": statistics.mean(r["steps"] * r["per_step_images"] for r in g),
                      "base": base, "final_mean": statistics.mean(finals),
                      "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                      "target": target, "to_target_s": hit[1] if hit else None,
                      "to_target_images": hit[2] if hit else None,
                      "no_signal": statistics.mean(no_signal) if no_signal else None}
    return out


def print_table(rows: list[dict], header: str) -> None:
    summary = summarize(rows)
    print(header)
    for setting, (what, _) in SETTINGS.items():
        keys = [k for k in summary if k[0] == setting]
        if not keys:
            continue
        s0 = summary[keys[0]]
        print(f"\n({setting}) {what}: held-out score of the base model {s0['base']:.3f}; "
              f"90 % of the best mean gain = {s0['target']:.3f}")
        print("| method | seeds | steps in budget | s/step | images sampled | held-out score "
              "at the end (mean +- std) | images to 90 % | s to 90 % | steps without signal |")
        print("|---|---|---|---|---|---|---|---|---|")
        for k in keys:
            s = summary[k]
            ns = "-" if s["no_signal"] is None else f"{100 * s['no_signal']:.0f} %"
            to_i = "-" if s["to_target_images"] is None else f"{s['to_target_images']:.0f}"
            to_s = "-" if s["to_target_s"] is None else f"{s['to_target_s']:.1f}"
            print(f"| {k[1]} | {s['seeds']} | {s['steps']:.1f} | {s['s_per_step']:.2f} | "
                  f"{s['images']:.0f} | {s['final_mean']:.3f} +- {s['final_std']:.3f} | {to_i} | "
                  f"{to_s} | {ns} |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    settings = [s for s in SETTINGS if any(k[0] == s for k in groups)]
    fig, axes = plt.subplots(len(settings), 2, figsize=(10, 3.6 * len(settings)), squeeze=False)
    for row_ax, setting in zip(axes, settings):
        for k, g in groups.items():
            if k[0] != setting:
                continue
            c = _mean_curve(g)
            row_ax[0].plot([x[1] for x in c], [x[3] for x in c], marker="o", ms=3, label=k[1])
            row_ax[1].plot([x[2] for x in c], [x[3] for x in c], marker="o", ms=3, label=k[1])
        row_ax[0].set_xlabel("training seconds (1 thread)")
        row_ax[1].set_xlabel("images sampled")
        for a in row_ax:
            a.set_ylabel(f"({setting}) held-out score")
            a.grid(alpha=0.3)
        row_ax[1].legend(fontsize=8)
    fig.suptitle(f"Held-out score, mean over {len({r['seed'] for r in rows})} seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget_s", type=positive_float, default=90.0, help="training seconds per run")
    ap.add_argument("--eval_every", type=positive_int, default=2)
    ap.add_argument("--lr", type=positive_float, default=1e-2, help="every method's learning rate")
    ap.add_argument("--settings", default="a,b")
    ap.add_argument("--out_dir", default="outputs/bench_judges")
    ap.add_argument("--plot", default="media/bench_judges.png")
    ap.add_argument("--from_json", default=None,
                    help="print the tables (and redraw the plot) of an earlier run")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        plot(saved["rows"], Path(args.plot))
        print_table(saved["rows"], saved["header"] + f" (from {args.from_json})")
        return
    from common.photos import write_photos

    work = Path(args.out_dir).resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f"--out_dir {work} is not empty; give a new folder")
    write_photos(work / "train", TRAIN)
    rows, t0 = [], time.time()
    for setting in args.settings.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in SETTINGS[setting][1]:
                job = {"setting": setting, "method": method, "seed": seed, "lr": args.lr,
                       "budget_s": args.budget_s, "eval_every": args.eval_every,
                       "train_dir": str(work / "train"),
                       "out": str(work / f"{setting}-{method.split()[0]}-seed{seed}")}
                rows.append(_isolated("eval", _isolated("train", job)))
                print(f"done: ({setting}) {method} seed {seed}: {rows[-1]['steps']} steps, "
                      f"{time.time() - t0:.0f} s so far", file=sys.stderr)
    header = (f"tiny-photo, {SIZE} px, N={STEPS}, LoRA rank {RANK}, lr {args.lr}, budget "
              f"{args.budget_s:.0f} training s per run, 1 thread, seeds {args.seeds}; load "
              f"average at the end {os.getloadavg()[0]:.1f} (2-core CPU, shared)")
    (work / "bench_judges.json").write_text(json.dumps({"header": header, "rows": rows}))
    plot(rows, Path(args.plot))
    print_table(rows, header)


if __name__ == "__main__":
    main()
