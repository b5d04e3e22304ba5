"""Full-size training step on a GPU with random weights: seconds per step and peak memory.

The real trainer (``alignprop.trainer.train``: data, prompt encoding, LoRA, sampler, rewards,
backward, AdamW, checkpoint) runs a few optimizer steps, with one substitution: the FLUX.1
Kontext pipeline (transformer, VAE, CLIP-L, T5-XXL) and InternVL3 are built from the real
configurations shipped in ``alignprop/configs/`` with random weights, directly on the GPU in
the run's dtype, instead of being read from a checkpoint (nothing to download, same shapes,
same kernels, same memory). The tokenizers are the real Qwen2.5 vocabulary for InternVL3
(common/qwen_vocab.py) and the built-in tiny ones for CLIP/T5 (only the prompt's ids change;
the T5 sequence is padded to --max_sequence_length as in a real run).

Every case runs in its own process (clean allocator). Printed per case:
* ``s/step``: median ``train/sec_per_step`` from metrics.jsonl over the steps after the first
  (the first includes cuDNN/cuBLAS warm-up); ``first``: the first step;
* ``peak training``: ``torch.cuda.max_memory_allocated`` from the moment the text encoders are
  freed (reward models built, LoRA, sampling, backward, AdamW); ``peak set-up``: the process
  peak before that (T5-XXL encoding the prompts beside the transformer);
* the estimator's prediction for the same flags (``--estimates FILE`` from
  ``--estimate_only``, which runs on any CPU) and the ratio measured / estimated.

    # on any machine (CPU, no weights): the estimator's numbers for every case
    PYTHONPATH=. python benchmarks/full_size_step.py --estimate_only --json est.json
    # on the GPU
    PYTHONPATH=. python benchmarks/full_size_step.py --estimates est.json --json measured.json

``--tiny`` runs the same code on the built-in tiny models' configurations (CPU, seconds): the
test suite uses it to keep this script working.

Speed (issue 26): ``--compile`` adds the trainer's ``--compile``; ``--profile`` runs two more
optimizer steps after the timed ones (not in s/step): one counting the host syncs CUDA reports
(``torch.cuda.set_sync_debug_mode``), one under torch.profiler, split by the ranges the library
marks (``common/profiling.py``: no-grad sampling, grad steps, VAE, each reward term, backward,
optimizer). ``--speed_table`` prints s/step, TFLOP/s, peak memory, syncs and that split for
saved runs side by side. ``benchmarks/gpu_speed_check.sh`` runs before/after in one call.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The README's training command (its reward flags), without the data/logging flags.
README_REWARDS = [
    "--aesthetic_model_type", "internvl", "--aesthetic_reward_scale", "6",
    "--similarity_backend", "internvl-content", "--image_reward_scale", "1.5",
    "--sharpness_backend", "internvl", "--sharpness_reward_scale", "2",
    "--grid_ratio_weight", "1", "--grid_ratio_period", "16",
    "--brightness_target", "0.45", "--brightness_band", "0.08", "--brightness_anchor_weight", "10",
]
README_TRAIN = ["--mixed_precision", "bf16", "--lora_rank", "32", "--sample_num_steps", "5",
                "--train_learning_rate", "1e-4", "--train_gradient_accumulation_steps", "4"]
# Math-only rewards: no reward model at all (the transformer's own cost).
NO_VLM_REWARDS = ["--aesthetic_model_type", "none", "--similarity_backend", "none",
                  "--grid_ratio_weight", "1", "--grid_ratio_period", "16",
                  "--brightness_target", "0.45", "--brightness_band", "0.08",
                  "--brightness_anchor_weight", "10"]
N28 = ["--mixed_precision", "bf16", "--lora_rank", "32", "--sample_num_steps", "28",
       "--backprop_steps", "1", "--train_gradient_accumulation_steps", "1"]
CKPT = ["--gradient_checkpointing"]

# name -> (size, flags, needs the style reference)
CASES = {
    "readme": (512, README_TRAIN + README_REWARDS, True),
    "readme+ckpt": (512, README_TRAIN + README_REWARDS + CKPT, True),
    "n28-novlm": (512, N28 + NO_VLM_REWARDS, False),
    "n28-novlm+ckpt": (512, N28 + NO_VLM_REWARDS + CKPT, False),
    "n28-internvl+ckpt": (512, N28 + README_REWARDS + CKPT, True),
    "n28-internvl": (512, N28 + README_REWARDS, True),
    "1024-n28-internvl+ckpt": (1024, N28 + README_REWARDS + CKPT, True),
}
DESCRIPTION = {
    "readme": "README command: N=5, K=1, accumulation 4, InternVL3-14B x3 terms",
    "readme+ckpt": "README command + --gradient_checkpointing",
    "n28-novlm": "N=28, K=1, math-only rewards (no VLM)",
    "n28-novlm+ckpt": "N=28, K=1, math-only rewards + checkpointing",
    "n28-internvl+ckpt": "N=28, K=1, README rewards (InternVL3-14B x3) + checkpointing",
    "n28-internvl": "N=28, K=1, README rewards (InternVL3-14B x3), no checkpointing",
    "1024-n28-internvl+ckpt": "1024x1024, N=28, K=1, README rewards + checkpointing",
}


def case_flags(name: str, data_dir: Path, out_dir: Path, steps: int, tiny: bool) -> list[str]:
    size, flags, style = CASES[name]
    if tiny:  # the built-in models: same code, CPU-sized
        size = 64
        flags = _replace(flags, "--mixed_precision", "no")
        flags = _replace(flags, "--sample_num_steps", "4")
        flags = _replace(flags, "--lora_rank", "4")
        flags += ["--pretrained_model", "tiny", "--internvl_model_id", "tiny",
                  "--internvl_dtype", "float32"]
    out = ["--data_dir", str(data_dir), "--output_dir", str(out_dir),
           "--image_height", str(size), "--image_width", str(size),
           "--max_train_steps", str(steps), "--log_with", "none", "--log_freq", "1",
           "--save_freq", "0", "--log_image_freq", "0"] + flags
    if style:
        out += ["--style_reference", str(data_dir.parent / "style.png")]
    return out


def _replace(flags: list[str], name: str, value: str) -> list[str]:
    flags = list(flags)
    flags[flags.index(name) + 1] = value
    return flags


def make_data(root: Path, size: int, n: int = 2) -> Path:
    """n photos-like test images (smooth colour fields with edges) and a style reference."""
    import numpy as np
    from PIL import Image

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(n + 1):
        img = np.stack([0.5 + 0.4 * np.sin(6 * x + i), 0.5 + 0.4 * np.cos(5 * y - i),
                        (x * y + 0.1 * i) % 1.0], -1)
        img[size // 3: size // 2, size // 4: size // 2] = 0.9  # an edge or two
        path = root / "style.png" if i == n else data / f"img_{i}.png"
        Image.fromarray((img * 255).clip(0, 255).astype("uint8")).save(path)
    return data


# --------------------------------------------------------------------------- random weights
@contextmanager
def _build_on(device: torch.device, dtype: torch.dtype):
    """Construct modules directly on ``device`` in ``dtype`` (no host copy of 12B weights)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def random_kontext_pipeline(device: torch.device, dtype: torch.dtype, tiny: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

    from alignprop.estimate import build_kontext, kontext_configs
    from alignprop.tiny_kontext import build_tiny_pipeline, tiny_clip_tokenizer, tiny_t5_tokenizer

    if tiny:
        return build_tiny_pipeline(dtype)
    cfg, _ = kontext_configs("black-forest-labs/FLUX.1-Kontext-dev")
    torch.manual_seed(0)
    with _build_on(device, dtype):  # the estimator's builder, on real tensors this time
        m = build_kontext(cfg, None, with_text=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        {k: v for k, v in cfg["scheduler"].items() if not k.startswith("_")})
    pipe = FluxKontextPipeline(scheduler=scheduler, tokenizer=tiny_clip_tokenizer(),
                               tokenizer_2=tiny_t5_tokenizer(), **m)
    pipe.tokenizer_max_length = 77
    return pipe


def random_internvl(model_id: str, dtype: torch.dtype, device: torch.device):
    """(family, model, processor) as rewards.vlm_model._load_pretrained returns them."""
    from alignprop.estimate import internvl_config
    from common.qwen_vocab import build_internvl3_processor
    from rewards.vlm_families import family_for_model_type

    config, _ = internvl_config(model_id)
    family = family_for_model_type("internvl")
    torch.manual_seed(1)
    with _build_on(device, dtype):
        model = family.model_class()(config)
    model.to(dtype).eval()
    processor = build_internvl3_processor(image_seq_length=int(config.image_seq_length))
    return family, model, processor


# --------------------------------------------------------------------------- extra steps
def count_syncs(step, run, marks: dict, cuda: bool):
    """One optimizer step with CUDA's sync debug mode: every host sync is a warning."""
    if not cuda:
        return step(run)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            res = step(run)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    marks["host_syncs"] = len(syncs)
    sites: dict[str, int] = {}
    for w in syncs:
        where = f"{Path(w.filename).name}:{w.lineno}"
        sites[where] = sites.get(where, 0) + 1
    marks["sync_sites"] = dict(sorted(sites.items(), key=lambda kv: -kv[1])[:12])
    return res


def profiled(step, run, marks: dict, cuda: bool):
    """One optimizer step under torch.profiler; the split by the library's ranges."""
    from torch.profiler import ProfilerActivity, profile

    from common.profiling import phase_table

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        res = step(run)
        if cuda:
            torch.cuda.synchronize()
    marks["profile_step_s"] = time.perf_counter() - t0
    marks["profile"] = phase_table(prof.key_averages())
    return res


# --------------------------------------------------------------------------- one case
def run_case(name: str, steps: int, tiny: bool, compile_: bool = False,
             profile: bool = False) -> dict:
    """One case in this process: the trainer with random full-size models; returns the row.

    ``profile``: two more optimizer steps after the ``steps`` timed ones (syncs, profiler)."""
    import alignprop.models as models_mod
    import alignprop.run as run_mod
    import alignprop.trainer as trainer_mod
    import rewards.vlm_model as vlm_mod
    from alignprop.config import parse_config

    cuda = torch.cuda.is_available() and not tiny
    device = torch.device("cuda") if cuda else torch.device("cpu")
    built = {}

    def load_pipeline(pretrained, dtype=torch.float32, revision=None, variant=None, flag=None):
        t0 = time.perf_counter()
        pipe = random_kontext_pipeline(device, dtype, tiny)
        built["kontext_s"] = time.perf_counter() - t0
        return pipe

    def load_vlm(model_id, dtype, trust_remote_code, flag):
        t0 = time.perf_counter()
        out = random_internvl(model_id, dtype, device)
        built["internvl_s"] = time.perf_counter() - t0
        return out

    build_reward = run_mod.build_reward_from_flags
    marks = {}

    def build_reward_after_setup(flags, *args, **kwargs):
        # The text encoders have been freed: what follows is the training peak.
        if cuda:
            marks["setup_peak"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        return build_reward(flags, *args, **kwargs)

    models_mod.load_kontext_pipeline = load_pipeline
    run_mod.build_reward_from_flags = build_reward_after_setup
    if not tiny:
        vlm_mod._load_pretrained = load_vlm

    step, calls = trainer_mod.optimizer_step, [0]

    def instrumented_step(run):
        calls[0] += 1
        if calls[0] == 2 and compile_:  # every graph of the run should exist by now
            marks["graphs_after_first"] = graphs_compiled()
        if calls[0] == steps + 1:       # the timed steps are over: their peak
            if cuda:
                marks["peak_timed"] = torch.cuda.max_memory_allocated()
            return count_syncs(step, run, marks, cuda)
        if calls[0] == steps + 2:
            return profiled(step, run, marks, cuda)
        return step(run)

    trainer_mod.optimizer_step = instrumented_step
    extra = 2 if profile else 0
    if compile_:
        from alignprop.compile import graphs_compiled

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = 64 if tiny else CASES[name][0]
        data = make_data(tmp, size)
        out_dir = tmp / "run"
        cfg, flags = parse_config(case_flags(name, data, out_dir, steps + extra, tiny)
                                  + (["--compile"] if compile_ else []))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer_mod.train(cfg, flags)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    secs = [r["train/sec_per_step"] for r in rows][:steps]  # the profiled steps are extra
    row = {"case": name, "what": DESCRIPTION[name], "steps": len(secs),
           "sec_per_step": statistics.median(secs[1:]) if len(secs) > 1 else secs[0],
           "first_step_s": secs[0], "skipped_steps": rows[-1].get("train/skipped_steps", 0),
           "reward": rows[-1].get("train/reward"), "wall_s": wall, **built,
           "device": torch.cuda.get_device_name() if cuda else "cpu", "tiny": tiny}
    if cuda:
        row["peak_training_bytes"] = marks.get("peak_timed", torch.cuda.max_memory_allocated())
        row["peak_setup_bytes"] = marks.get("setup_peak", 0)
        row["reserved_bytes"] = torch.cuda.max_memory_reserved()
    if compile_:
        row["compile"] = True
        row["graphs_after_first_step"] = marks.get("graphs_after_first")
        row["graphs_at_end"] = graphs_compiled()
    for key in ("host_syncs", "sync_sites", "profile", "profile_step_s"):
        if key in marks:
            row[key] = marks[key]
    return row


def run_isolated(name: str, steps: int, tiny: bool, timeout: float, compile_: bool = False,
                 profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--steps", str(steps)] + (["--tiny"] if tiny else [])
    cmd += (["--compile"] if compile_ else []) + (["--profile"] if profile else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": name, "what": DESCRIPTION[name], "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("ROW "):
            return json.loads(line[4:])
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    oom = "OutOfMemoryError" in p.stderr or "out of memory" in p.stderr
    return {"case": name, "what": DESCRIPTION[name],
            "error": "out of memory" if oom else " | ".join(tail)[-400:]}


# --------------------------------------------------------------------------- estimates
def estimate_case(name: str, tiny: bool) -> dict:
    from alignprop.config import parse_config
    from alignprop.estimate import estimate_training

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp, 64)
        cfg, flags = parse_config(case_flags(name, data, tmp / "run", 1, tiny))
        est = estimate_training(cfg, flags)
    return {"case": name, "peak_bytes": est.peak_bytes, "setup_peak_bytes": est.setup_peak_bytes,
            "flops": est.total_flops, "flops_by_phase": est.flops, "pixels": est.pixels,
            "images_per_step": est.images_per_step,
            "h100_40pct_s": est.as_dict()["seconds_at_40pct"]["H100 SXM"],
            "trace_s": est.seconds}


def _gb(b) -> str:
    return f"{b / 1e9:.2f} GB" if b else "-"


def _header(rows: list[dict]) -> str:
    dev = next((r["device"] for r in rows if "device" in r), "?")
    steps = next((r["steps"] for r in rows if "steps" in r), "?")
    return f"{dev}, bf16, {steps} optimizer steps per case, random weights"


def table(rows: list[dict], estimates: dict[str, dict], leak_bytes: int = 0,
          earlier: dict[str, dict] | None = None) -> str:
    """Measured vs estimated. ``leak_bytes``: bytes a since-fixed leak held through the run
    (a saved run's ``t5_leak_bytes``), taken off the measured peak before the ratio;
    ``earlier``: the estimator's figures at the time of the run, printed beside today's."""
    lk = " (without the leak)" if leak_bytes else ""
    cols = ["case", "s/step (first)", "peak training", *([f"peak{lk}"] if leak_bytes else []),
            "peak set-up", *(["estimated then"] if earlier else []), "estimated peak (set-up)",
            f"measured{lk} / estimated", "estimated TFLOP/step", "achieved TFLOP/s"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        e = estimates.get(r["case"], {})
        est = f"{_gb(e.get('peak_bytes'))} ({_gb(e.get('setup_peak_bytes'))})" if e else "-"
        if "error" in r:  # the estimate still goes in its own column
            cells = [r["what"], r["error"]] + ["-"] * (len(cols) - 2)
            cells[cols.index("estimated peak (set-up)")] = est
            out.append("| " + " | ".join(cells) + " |")
            continue
        peak = r.get("peak_training_bytes")
        kept = peak - leak_bytes if peak else None
        ratio = f"{kept / e['peak_bytes']:.3f}" if e and kept else "-"
        skipped = f" ({r['skipped_steps']} skipped)" if r.get("skipped_steps") else ""
        cells = [r["what"], f"{r['sec_per_step']:.2f} ({r['first_step_s']:.2f}){skipped}",
                 _gb(peak), *([_gb(kept)] if leak_bytes else []), _gb(r.get("peak_setup_bytes")),
                 *([_gb(earlier.get(r["case"], {}).get("peak_bytes"))] if earlier else []),
                 est, ratio, f"{e['flops'] / 1e12:.0f}" if e else "-",
                 f"{e['flops'] / r['sec_per_step'] / 1e12:.0f}" if e and r["sec_per_step"] else "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# --------------------------------------------------------------------------- speed table
SAVED = ROOT / "media" / "full_size_step_h200.json"
# (range, column): device seconds per optimizer step (host seconds on a CPU)
SPLIT = [("sampling/no-grad", "no-grad steps"), ("sampling/grad", "grad steps"),
         ("vae/encode", "VAE encode"), ("vae/decode", "VAE decode"), ("reward", "rewards"),
         ("backward/autograd", "backward"), ("optimizer", "optimizer")]


def speed_table(runs: list[tuple[str, dict]], flops: dict[str, float]) -> str:
    """Runs side by side: s/step, TFLOP/s, peak, host syncs, the profile split.

    TFLOP/s divides the estimator's FLOPs of the step (``flops[case]``, the same work for
    every run of a case) by the measured s/step."""
    cols = ["run", "case", "s/step (first)", "TFLOP/s", "peak training", "host syncs / step",
            *[c for _, c in SPLIT], "reward terms"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, r in runs:
        if "error" in r:
            out.append("| " + " | ".join([label, r["case"], r["error"]] + ["-"] * (len(cols) - 3))
                       + " |")
            continue
        prof = {p["range"]: p for p in r.get("profile", [])}
        gpu = r.get("device", "cpu") != "cpu"

        def secs(name):
            p = prof.get(name)
            return f"{(p['device_s'] if gpu else p['cpu_s']):.2f}" if p else "-"

        terms = ", ".join(f"{n.split('/', 1)[1]} {secs(n)}" for n in prof if n.startswith("reward/"))
        f = None if r.get("tiny") or r.get("device") == "cpu" else flops.get(r["case"])
        cells = [label, r["case"], f"{r['sec_per_step']:.2f} ({r['first_step_s']:.2f})",
                 f"{f / r['sec_per_step'] / 1e12:.0f}" if f else "-",
                 _gb(r.get("peak_training_bytes")), str(r.get("host_syncs", "-")),
                 *[secs(name) for name, _ in SPLIT], terms or "-"]
        out.append("| " + " | ".join(cells) + " |")
    where = "the GPU" if any(r.get("device", "cpu") != "cpu" for _, r in runs) else "the host"
    return "\n".join(out) + f"\n\nsplit: seconds per optimizer step on {where} (torch.profiler)"


def _saved_rows(spec: str) -> tuple[str, list[dict]]:
    label, _, path = spec.partition("=")
    if not path:
        label, path = Path(spec).stem, spec
    data = json.loads(Path(path).read_text())
    return label, data["rows"] if isinstance(data, dict) else data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"Comma-separated cases (default all): {', '.join(CASES)}.")
    p.add_argument("--steps", type=int, default=3, help="Optimizer steps per case (>= 2).")
    p.add_argument("--estimate_only", action="store_true",
                   help="Only the estimator's numbers (CPU, no weights, no GPU).")
    p.add_argument("--estimates", default=None, help="JSON from --estimate_only to print beside.")
    p.add_argument("--json", default=None, help="Write the rows to this file.")
    p.add_argument("--tiny", action="store_true", help="Built-in tiny models on the CPU (a check).")
    p.add_argument("--timeout", type=float, default=900, help="Seconds per case.")
    p.add_argument("--budget", type=float, default=0,
                   help="Seconds: start no new case after this many (0 = no limit).")
    p.add_argument("--from_json", default=None,
                   help="Print the table of a saved run (--json output; --estimates adds them).")
    p.add_argument("--compile", action="store_true", help="Train with --compile (regional).")
    p.add_argument("--profile", action="store_true",
                   help="Two more steps per case after the timed ones: host syncs, profiler split.")
    p.add_argument("--speed_table", nargs="+", default=None, metavar="LABEL=FILE",
                   help="Print saved runs (--json files) side by side: s/step, TFLOP/s, peak, "
                        "syncs, profile split; FLOPs from --estimates or the saved H200 run.")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        p.error(f"--cases: unknown {unknown}; known: {', '.join(CASES)}")
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    if args.timeout <= 0 or args.budget < 0:
        p.error("--timeout must be > 0 and --budget >= 0 (seconds)")
    for flag in ("from_json", "estimates"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            p.error(f"--{flag}: {path} is not a file")
    if args.one:
        print("ROW " + json.dumps(run_case(args.one, args.steps, args.tiny, args.compile,
                                           args.profile)), flush=True)
        return
    if args.speed_table:
        for spec in args.speed_table:
            if not Path(spec.partition("=")[2] or spec).is_file():
                p.error(f"--speed_table: {spec} is not a file")
        source = json.loads(Path(args.estimates or SAVED).read_text())
        source = source.get("estimates", source) if isinstance(source, dict) else source
        est = source.values() if isinstance(source, dict) else source
        flops = {e["case"]: e["flops"] for e in est if "flops" in e}
        runs = [(label, r) for label, rows in map(_saved_rows, args.speed_table) for r in rows]
        print(speed_table(runs, flops))
        return
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        estimates = saved.get("estimates") or {}
        if args.estimates:
            estimates = {r["case"]: r for r in json.loads(Path(args.estimates).read_text())}
        print(_header(saved["rows"]) + "\n")
        print(table(saved["rows"], estimates, saved.get("t5_leak_bytes", 0),
                    saved.get("estimates_cpu_autocast")))
        return
    if args.estimate_only:
        rows = []
        for name in names:
            rows.append(estimate_case(name, args.tiny))
            print(json.dumps(rows[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    if not args.tiny and not torch.cuda.is_available():
        p.error("no GPU here: use --estimate_only (or --tiny to check the script on the CPU)")
    estimates = {}
    if args.estimates:
        estimates = {r["case"]: r for r in json.loads(Path(args.estimates).read_text())}
    rows, start = [], time.perf_counter()
    for name in names:
        if args.budget and time.perf_counter() - start > args.budget:
            rows.append({"case": name, "what": DESCRIPTION[name], "error": "not run (--budget)"})
            continue
        rows.append(run_isolated(name, args.steps, args.tiny, args.timeout, args.compile,
                                 args.profile))
        print(json.dumps(rows[-1]), flush=True)
        if args.json:  # after every case: a later timeout keeps what was measured
            Path(args.json).write_text(json.dumps({"rows": rows, "estimates": estimates}, indent=2))
    print("\n" + _header(rows) + "\n")
    print(table(rows, estimates))


if __name__ == "__main__":
    main()
