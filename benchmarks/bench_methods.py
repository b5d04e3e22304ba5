"""Training methods side by side, by optimizer steps and by images scored (not wall-clock).

    nice -n 10 env PYTHONPATH=. python benchmarks/bench_methods.py     # ~35 min, shared 2 cores
    PYTHONPATH=. python benchmarks/bench_methods.py --from_json media/bench_methods.json

Every method (docs/methods.md) trains the same LoRA on the pretrained ``tiny-photo`` (64 px,
N = 8 sampler steps, batch 2, LoRA rank 4) with the same reward -- the brightness anchor
(weight 10, target 0.65, band 0), a goal every method can reach -- on the same four training
photos (hubble_deep_field, retina, camera, coins: tiny-photo's pretraining set) for the same
number of optimizer steps (``--train_steps``, 40). The runs go one after another in one
process with one torch thread (the pipeline is built once; the trainer's own loop,
alignprop/trainer.py, builds each run).

Learning rate, per method: a small sweep (``--lrs``) on two seeds (``--sweep_seeds``, not test
seeds) for ``--sweep_steps`` steps, evaluated at every ``--eval_at`` step up to
``--sweep_steps`` on a VALIDATION set -- the four scikit-image photos held out of every
pretraining (astronaut, chelsea, coffee, rocket) x ``--noise_draws`` -- and scored by the mean
reward over its seeds and evaluations (a rate that overshoots the goal early or on one seed
pays for it); the best learning rate (the smaller on a tie) is the method's. The sweep's table
is printed too. (A first protocol -- one sweep seed, evaluations at steps 20 and 40 only --
picked 0.03 for three methods, which overshot the goal early on the test seeds.)

Test: each method at its learning rate for ``--seeds`` (5) seeds; every ``--eval_at`` step the
LoRA samples the full N-step chain (what a user gets, not the method's training proxy) on
the TEST set -- the 12 photos of alignprop/assets/held_out_photos/ (another source, never in
any pretraining or training) x ``--noise_draws`` fixed noise draws each -- scored by the same
reward. Reported: mean +- std over seeds of the test reward at each evaluation (each run's
figure is the mean over 12 photos x the draws); the step and the images scored at which the
mean curve first reaches 90 % of the largest mean gain; the drift from the base model (RMS
pixel difference on the test set at the last step); images scored and transformer forwards
per optimizer step (computed from the method's definition: the cost measures that do not
depend on the machine). Two methods whose difference is within 2 standard errors of the
difference (Welch: 2 sqrt(s_a^2/n_a + s_b^2/n_b)) are called a tie.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
from common.checks import check_paths  # noqa: E402
from common.cli import nonneg_int, positive_float, positive_int  # noqa: E402

# name -> trainer flags besides the common ones
VARIANTS = {
    "DRaFT-1 (alignprop K=1)": {"method": "alignprop", "backprop_steps": 1},
    "AlignProp (t_b per micro-batch)": {"method": "alignprop", "truncated_backprop": "alignprop"},
    "DRaFT-LV (n=2)": {"method": "draft-lv"},
    "ReFL": {"method": "refl"},
    "ImageReFL": {"method": "imagerefl"},
    "DRaFT-K (K=all)": {"method": "alignprop", "backprop_steps": -1},
}
TRAIN = ("hubble_deep_field", "retina", "camera", "coins")
VALIDATION = ("astronaut", "chelsea", "coffee", "rocket")   # common/photos.py HELD_OUT
PROMPT = "Make this photo brighter."
BATCH, RANK, SEQ = 2, 4, 64
TARGETS = "attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,proj_out"
EVAL_SEED = 1234
FRACTION = 0.9


def _reward_flags():
    from alignprop.reward_flags import RewardFlags

    return RewardFlags(brightness_anchor_weight=10, brightness_target=0.65, brightness_band=0)


# --------------------------------------------------------------------------- costs
def _k_law(n: int, mean: float = 42.0, std: float = 5.0) -> dict[int, float]:
    """P(K = k) of AlignProp's truncation at N steps (K = N - t_b, t_b = int(Normal) scaled
    from 50 steps, redrawn until 1 <= t_b <= N-1): for the forwards-with-grad column."""
    m, s = mean * n / 50, std * n / 50
    cdf = lambda x: 0.5 * (1 + math.erf((x - m) / (s * math.sqrt(2))))  # noqa: E731
    p = {n - t: cdf(t + 1) - cdf(t) for t in range(1, n)}
    total = sum(p.values())
    return {k: v / total for k, v in p.items()}


def costs(name: str, n: int) -> dict:
    """Per image of a batch, per optimizer step: images scored by the reward, transformer
    forwards (all) and those with gradient (expected values over the method's draws)."""
    method = VARIANTS[name]
    k = min(n - 1, math.ceil(0.75 * n))        # ReFL / ImageReFL late range [k, N-1]
    mean_m = (k + n - 1) / 2
    if method["method"] == "alignprop":
        if method.get("truncated_backprop") == "alignprop":
            grad = sum(kk * p for kk, p in _k_law(n).items())
        else:
            grad = n if method["backprop_steps"] == -1 else method["backprop_steps"]
        return {"scored": 1, "forwards": n, "grad": grad}
    if method["method"] == "draft-lv":
        return {"scored": 2, "forwards": n + 2, "grad": 2}
    if method["method"] == "refl":
        return {"scored": 1, "forwards": mean_m + 1, "grad": 1}
    # imagerefl: the regulariser at k, the no-grad steps k..m-1, the reward's at m (shared
    # with the regulariser's when m = k)
    p_same = 1 / (n - k)
    return {"scored": 1, "forwards": 1 + (mean_m - k) + (1 - p_same), "grad": 2 - p_same}


# --------------------------------------------------------------------------- one run
class Evaluator:
    """The base model's and the LoRAs' held-out rewards on the validation and test sets."""

    def __init__(self, args):
        import torch

        from alignprop.held_out import HeldOut
        from alignprop.photo_sets import load_second_set
        from alignprop.reward_flags import build_reward_from_flags

        targets = TARGETS.split(",")
        common = dict(prompt=PROMPT, size=args.size, num_steps=args.steps, lora_rank=RANK,
                      lora_targets=targets, max_sequence_length=SEQ, seed=EVAL_SEED,
                      draws=args.noise_draws)
        self.test = HeldOut(args.model, load_second_set(args.size), **common)
        self.val = HeldOut(args.model, VALIDATION, **common)
        self.reward = build_reward_from_flags(_reward_flags())
        with torch.no_grad():
            self.base_images = self.test.images(None)
        self.base = {"test": self._mean(self.test, self.base_images),
                     "validation": self._mean(self.val, self.val.images(None))}

    def _mean(self, held, images) -> float:
        r = self.reward(images, held.inputs, held.prompts)[0].detach().float()
        return float(r.mean())

    def score(self, lora, which: str) -> tuple[float, float | None]:
        """(mean reward, drift RMS px vs the base model on the test set or None)."""
        held = self.test if which == "test" else self.val
        images = held.images(lora)
        drift = (float(((images - self.base_images) ** 2).mean().sqrt())
                 if which == "test" else None)
        return self._mean(held, images), drift


def train_run(name: str, lr: float, seed: int, steps: int, eval_at: list[int], which: str,
              args, work: Path, evaluator: Evaluator) -> dict:
    """Train one (method, lr, seed) for ``steps`` optimizer steps; evaluate the checkpoints."""
    from alignprop.config import TrainConfig
    from alignprop.trainer import train

    out = work / f"{which}_{name.split(' ')[0]}_{lr:g}_{seed}"
    save_every = math.gcd(*eval_at)
    cfg = TrainConfig(pretrained_model=args.model, data_dir=str(work / "train"), prompt=PROMPT,
                      output_dir=str(out), image_height=args.size, image_width=args.size,
                      sample_num_steps=args.steps, train_batch_size=BATCH,
                      train_learning_rate=lr, lora_rank=RANK, lora_target_modules=TARGETS,
                      max_sequence_length=SEQ, max_train_steps=steps, save_freq=save_every,
                      checkpoints_total_limit=None, log_image_freq=0, log_with="none",
                      seed=seed, mixed_precision="no", **VARIANTS[name])
    t0 = time.perf_counter()
    result = train(cfg, _reward_flags())
    train_s = time.perf_counter() - t0
    curve, drift = [], None
    for step in eval_at:
        ck = out / "checkpoints" / f"checkpoint-{step:06d}"
        reward, d = evaluator.score(ck, which)
        curve.append([step, reward])
        if step == eval_at[-1]:
            drift = d
    return {"name": name, "lr": lr, "seed": seed, "role": which, "steps": result.global_step,
            "skipped": result.skipped_steps, "curve": curve, "drift_rms": drift,
            "train_s": train_s,
            "train_reward_last": result.history[-1].get("train/reward")}


# --------------------------------------------------------------------------- the whole run
def run(args, work: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    from common.photos import write_photos

    write_photos(work / "train", TRAIN)
    evaluator = Evaluator(args)
    methods = args.methods.split(",")
    sweep_at = sorted({s for s in args.eval_at if s <= args.sweep_steps} | {args.sweep_steps})
    test_at = sorted(set(args.eval_at) | {args.train_steps})
    data = {"config": {k: v for k, v in vars(args).items() if k not in ("from_json",)},
            "base": evaluator.base, "runs": [], "costs": {m: costs(m, args.steps)
                                                          for m in methods},
            "machine": f"{os.cpu_count()}-core CPU, shared (nice 10), 1 torch thread",
            "load_start": os.getloadavg()[0]}
    save = work / "bench_methods.json"

    def done(row):
        data["runs"].append(row)
        save.write_text(json.dumps(data, indent=1))   # partial results survive a stop
        print(f"done: {row['role']} {row['name']} lr {row['lr']:g} seed {row['seed']}: "
              f"{row['curve']}", file=sys.stderr, flush=True)

    chosen = {}
    for name in methods:
        rows = []
        for lr in args.lrs:
            for seed in args.sweep_seeds:
                row = train_run(name, lr, seed, args.sweep_steps, sweep_at, "validation",
                                args, work, evaluator)
                done(row)
                rows.append(row)
        chosen[name] = pick_lr(rows)
    data["chosen_lr"] = chosen
    for seed in args.seeds:
        for name in methods:
            done(train_run(name, chosen[name], seed, args.train_steps, test_at, "test", args,
                           work, evaluator))
    data["load_end"] = os.getloadavg()[0]
    save.write_text(json.dumps(data, indent=1))
    return data


def sweep_score(rows: list[dict], lr: float) -> float | None:
    """Mean validation reward of ``lr`` over the sweep's seeds and evaluations."""
    values = [v for r in rows if r["lr"] == lr for _, v in r["curve"]]
    return statistics.mean(values) if values else None


def pick_lr(rows: list[dict]) -> float:
    """The learning rate of the best sweep score; the smaller one on equal scores."""
    return min({r["lr"] for r in rows}, key=lambda lr: (-round(sweep_score(rows, lr), 6), lr))


# --------------------------------------------------------------------------- report
def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _tie(a: list[float], b: list[float]) -> bool:
    """Within noise: |mean difference| <= 2 standard errors of the difference."""
    (ma, sa), (mb, sb) = _stats(a), _stats(b)
    return abs(ma - mb) <= 2 * math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))


def summarise(data: dict) -> dict:
    """Per method: the test curve's per-step values over seeds, its mean curve, and the
    step / images scored to 90 % of the largest mean gain."""
    tests = [r for r in data["runs"] if r["role"] == "test"]
    methods = [m for m in data["config"]["methods"].split(",")
               if any(r["name"] == m for r in tests)]
    out = {}
    for m in methods:
        rows = [r for r in tests if r["name"] == m]
        steps = [s for s, _ in rows[0]["curve"]]
        per_step = {s: [r["curve"][i][1] for r in rows] for i, s in enumerate(steps)}
        out[m] = {"rows": rows, "steps": steps, "per_step": per_step,
                  "mean": {s: _stats(v)[0] for s, v in per_step.items()},
                  "drift": _stats([r["drift_rms"] for r in rows])}
    base = data["base"]["test"]
    best = max((max(v["mean"].values()) for v in out.values()), default=base)
    target = base + FRACTION * (best - base)
    batch = data["config"].get("batch", BATCH)
    for m, v in out.items():
        hit = next((s for s in v["steps"] if v["mean"][s] >= target), None)
        v["to_target"] = hit
        v["images_to_target"] = (None if hit is None
                                 else hit * batch * data["costs"][m]["scored"])
    return {"methods": out, "target": target, "base": base}


def print_report(data: dict) -> None:
    cfg = data["config"]
    s = summarise(data)
    print(f"model {cfg['model']}, {cfg['size']} px, N={cfg['steps']}, batch {BATCH}, LoRA rank "
          f"{RANK}, {cfg['train_steps']} optimizer steps per run, seeds "
          f"{','.join(map(str, cfg['seeds']))}; test: 12 held-out photos x "
          f"{cfg['noise_draws']} noise draws; {data['machine']}, load average "
          f"{data['load_start']:.1f} at the start, {data.get('load_end', float('nan')):.1f} "
          f"at the end")
    print()
    sweep_at = sorted({s for s in cfg["eval_at"] if s <= cfg["sweep_steps"]}
                      | {cfg["sweep_steps"]})
    print(f"(learning-rate sweep: seeds {','.join(map(str, cfg['sweep_seeds']))}, "
          f"{cfg['sweep_steps']} steps, validation reward = mean over the seeds and the "
          f"evaluations at steps {','.join(map(str, sweep_at))} on 4 other held-out photos x "
          f"{cfg['noise_draws']} draws; base model {data['base']['validation']:.4f})")
    lrs = cfg["lrs"]
    print("| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |")
    print("|---|" + "---|" * (len(lrs) + 1))
    for m in s["methods"] or cfg["methods"].split(","):
        rows = [r for r in data["runs"] if r["role"] == "validation" and r["name"] == m]
        cells = ["-" if sweep_score(rows, lr) is None else f"{sweep_score(rows, lr):.4f}"
                 for lr in lrs]
        chosen = data.get("chosen_lr", {}).get(m)
        edge = " (edge of the sweep)" if chosen in (min(lrs), max(lrs)) else ""
        print(f"| {m} | " + " | ".join(cells)
              + f" | {'-' if chosen is None else f'{chosen:g}{edge}'} |")
    print()
    steps = next(iter(s["methods"].values()))["steps"] if s["methods"] else []
    print(f"(test reward of the base model {s['base']:.4f}; 90 % of the largest mean gain = "
          f"{s['target']:.4f}; mean +- std over seeds)")
    print("| method | lr | images scored / step | forwards / step (with grad) | "
          + " | ".join(f"test reward @ step {st}" for st in steps)
          + " | steps to 90 % | images to 90 % | drift (RMS px) |")
    print("|---|---|---|---|" + "---|" * len(steps) + "---|---|---|")
    for m, v in s["methods"].items():
        c = data["costs"][m]
        cells = []
        for st in steps:
            mean, sd = _stats(v["per_step"][st])
            cells.append(f"{mean:.4f} +- {sd:.4f}")
        hit = "-" if v["to_target"] is None else str(v["to_target"])
        imgs = "-" if v["images_to_target"] is None else str(v["images_to_target"])
        print(f"| {m} | {v['rows'][0]['lr']:g} | {BATCH * c['scored']} | "
              f"{BATCH * c['forwards']:.1f} ({BATCH * c['grad']:.2f}) | " + " | ".join(cells)
              + f" | {hit} | {imgs} | {v['drift'][0]:.4f} +- {v['drift'][1]:.4f} |")
    print()
    for st in steps:
        print(f"({ranking(s['methods'], st)})")


def ranking(methods: dict, step: int) -> str:
    """Which methods are ahead at ``step`` and which are tied with the best (within noise)."""
    order = sorted(methods, key=lambda m: -methods[m]["mean"][step])
    best = order[0]
    tied = [m for m in order[1:] if _tie(methods[best]["per_step"][step],
                                         methods[m]["per_step"][step])]
    behind = [m for m in order[1:] if m not in tied]
    text = f"step {step}: best mean {best}"
    text += f"; tied with it (within 2 standard errors): {', '.join(tied)}" if tied else \
        "; no tie with it"
    if behind:
        text += f"; behind it beyond noise: {', '.join(behind)}"
    return text


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(data)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, v in s["methods"].items():
        steps = [0] + v["steps"]
        means = [s["base"]] + [v["mean"][st] for st in v["steps"]]
        sds = [0.0] + [_stats(v["per_step"][st])[1] for st in v["steps"]]
        images = [st * BATCH * data["costs"][m]["scored"] for st in steps]
        for a, x in ((ax[0], steps), (ax[1], images)):
            a.errorbar(x, means, yerr=sds, marker="o", ms=3, capsize=2, label=m)
    ax[0].set_xlabel("optimizer steps")
    ax[1].set_xlabel("images scored by the reward")
    for a in ax:
        a.set_ylabel("test reward (12 held-out photos)")
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=7)
    fig.suptitle("Methods at their swept learning rates: mean +- std over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- CLI
def _list(kind):
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
        if not values:
            raise argparse.ArgumentTypeError("give at least one value")
        return values
    return parse


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-photo", help="'tiny-photo', 'tiny' or a folder")
    ap.add_argument("--size", type=positive_int, default=64)
    ap.add_argument("--steps", type=positive_int, default=8, help="sampler steps N")
    ap.add_argument("--train_steps", type=positive_int, default=40,
                    help="optimizer steps per test run")
    ap.add_argument("--eval_at", type=_list(positive_int), default=[5, 10, 20, 40],
                    help="steps at which the test runs are evaluated (the last = --train_steps)")
    ap.add_argument("--seeds", type=_list(nonneg_int), default=[0, 1, 2, 3, 4])
    ap.add_argument("--lrs", type=_list(positive_float), default=[3e-3, 1e-2, 3e-2])
    ap.add_argument("--sweep_seeds", type=_list(nonneg_int), default=[100, 101])
    ap.add_argument("--sweep_steps", type=positive_int, default=20,
                    help="optimizer steps of a sweep run (evaluated at the --eval_at steps "
                         "up to it)")
    ap.add_argument("--noise_draws", type=positive_int, default=2)
    ap.add_argument("--methods", default=",".join(VARIANTS),
                    help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--out_dir", default="outputs/bench_methods")
    ap.add_argument("--plot", default="media/bench_methods.png")
    ap.add_argument("--from_json", default=None,
                    help="print the tables (and redraw the plot) of a saved bench_methods.json")
    args = ap.parse_args(argv)
    unknown = [m for m in args.methods.split(",") if m not in VARIANTS]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if any(s > args.train_steps for s in args.eval_at):
        ap.error("--eval_at: every step must be <= --train_steps")
    if args.from_json:
        check_paths([("--from_json", "file", args.from_json)])
        data = json.loads(Path(args.from_json).read_text())
        plot(data, Path(args.plot))
        print_report(data)
        return
    work = Path(args.out_dir).resolve()
    if work.exists() and any(work.iterdir()):
        ap.error(f"--out_dir {work} is not empty; give a new folder")
    data = run(args, work)
    plot(data, Path(args.plot))
    print_report(data)


if __name__ == "__main__":
    main()
