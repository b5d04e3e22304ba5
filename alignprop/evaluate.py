"""Score folders of images with the project's rewards: ``python -m alignprop.evaluate``.

Example (after ``python -m alignprop.generate ... --output_dir out``)::

    python -m alignprop.evaluate --originals_dir photos --base_dir out/base --lora_dir out \\
        --output_dir eval --similarity_backend lpips --aesthetic_model_type internvl

Folders are paired by file STEM (``cat.jpg`` in the originals pairs with
``cat.png`` in the outputs) under its sub-folder: folders are searched recursively
(``--no_recursive``: the top level only), and ``sub/cat.jpg`` pairs with ``sub/cat.png``
(as ``alignprop.generate`` writes them); another evaluated folder inside one (``out/base``
inside ``out``) is not part of it. Names missing from some folder are reported as
unpaired, unreadable files are reported and skipped. Rewards are chosen with the
training flags (``alignprop.reward_flags.RewardFlags``: ``--grid_ratio_weight``,
``--similarity_backend`` ...), with ``--rewards grid,brightness`` (registry names,
default options) and/or ``--reward_spec specs.json`` (a list of
``rewards.build_rewards`` specs). The anti-grid and brightness terms are always
added as reward-hacking checks unless ``--no_hacking_check``.

Rewards that compare with the input (lpips, face, InternVL content similarity)
receive the original, resized (aspect kept, centre crop) to the output's size.

Writes to ``--output_dir``: ``scores.csv`` / ``scores.json`` (one row per image
and folder), ``summary.json`` (means, std, paired win-rates, unpaired and
unreadable files, diversity), ``summary.csv``, ``win_rates.csv``,
``distributions.png`` and ``paired_scatter.png``.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from alignprop.diversity import _SEED_SUFFIX, build_metric, folder_diversity, group_seed_outputs
from alignprop.generate import read_prompts
from alignprop.reward_flags import RewardBuildError, RewardFlags, build_term, reward_specs
from alignprop.validate import check_reward_specs
from common.checks import check_paths
from common.cli import UserError, run_cli
from common.hub import resolve_device_dtype
from common.images import (ImageLoadError, folder_counts, list_images, load_image,
                           relative_name, resize_to)
from common.original_flags import record_given, resolve_source
from common.paths import check_outputs_spare_inputs, check_writable_dir
from rewards import available_rewards, reads_input

FOLDERS = ("original", "base", "lora")          # column order everywhere
COMPARISONS = (("lora", "base"), ("lora", "original"), ("base", "original"))
CHECK_TERMS = ("grid", "brightness")            # reward-hacking monitors
SKIP_FILES = {"contact_sheet"}                   # what alignprop.generate writes beside outputs
# Most pixels scored in one batch (16 MP: 192 MB as float32 RGB); larger photos go alone.
BATCH_PIXELS = 16 * 1024 * 1024


@dataclass
class EvalArgs:
    """Evaluation options (the reward options are the training flags, RewardFlags)."""

    output_dir: str = field(metadata={"help": "Where scores.csv/json, summary.json/csv, "
                                              "win_rates.csv and the plots are written (not one of the "
                                              "image folders: inputs are never written over)."})
    originals_dir: Optional[str] = field(default=None, metadata={
        "help": "Folder of the input images; rewards that compare with the input use it, and "
                "non-input terms are also scored on it (LoRA vs original win-rates)."})
    base_dir: Optional[str] = field(default=None, metadata={
        "help": "Folder of base-model outputs (e.g. OUTPUT_DIR/base of alignprop.generate)."})
    lora_dir: Optional[str] = field(default=None, metadata={
        "help": "Folder of LoRA outputs (e.g. OUTPUT_DIR of alignprop.generate)."})
    rewards: Optional[str] = field(default=None, metadata={
        "help": "Comma-separated registry names scored with default options, e.g. "
                "'grid,brightness,crispness'; adds to the terms the reward flags enable."})
    reward_spec: Optional[str] = field(default=None, metadata={
        "help": "JSON file: a list of rewards.build_rewards specs "
                '[{"name": "lpips", "weight": 1, "net": "alex"}, ...] (same format as training).'})
    recursive: bool = field(default=True, metadata={
        "help": "Search the image folders' sub-folders too (as training and generate do); "
                "files pair by their path under the folder (sub/cat.jpg <-> sub/cat.png); the "
                "images found per sub-folder are printed. --no_recursive: the top level only."})
    hacking_check: bool = field(default=True, metadata={
        "help": "Also score the anti-grid and brightness terms (reward-hacking check) with the "
                "--grid_* / --brightness_* settings; --no_hacking_check turns it off."})
    prompt: Optional[str] = field(default=None, metadata={
        "help": "Edit instruction passed to rewards that read it (most ignore it)."})
    prompt_file: Optional[str] = field(default=None, metadata={
        "help": "Text file with the instruction, or JSON {file name or stem: prompt}."})
    batch_size: int = field(default=8, metadata={
        "help": "Images scored per call (images of the same size are batched together)."})
    device: str = field(default="auto", metadata={
        "help": "Device for model-backed rewards: auto (cuda if available), cpu, cuda ..."})
    tie_tolerance: float = field(default=1e-6, metadata={
        "help": "Score differences of at most this much count as ties (half a win)."})
    plots: bool = field(default=True, metadata={
        "help": "Write distributions.png and paired_scatter.png (--no_plots to skip)."})
    diversity_dir: list[str] = field(default_factory=list, metadata={
        "help": "Folder(s) of several seeds per input, as DIR or LABEL=DIR (e.g. base=out/base "
                "lora=out): per-seed subfolders or files named <name>_seed<k>.png. Reports the "
                "mean pairwise distance across seeds (higher = more varied)."})
    diversity_metric: str = field(default="lpips", metadata={
        "help": "Diversity distance: lpips (perceptual), l2 (RMS pixel) or ssim (1 - SSIM).",
        "choices": ["lpips", "l2", "ssim"]})
    diversity_resolution: int = field(default=256, metadata={
        "help": "Side images are resized to before the diversity distance."})
    lpips_pretrained: bool = field(default=True, metadata={
        "help": "Load LPIPS' ImageNet backbone for --diversity_metric lpips (false: random "
                "backbone, only for tests; --lpips_net picks the net, --lpips_backbone its "
                "weights)."})

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be >= 1, got {self.batch_size}")
        if not (self.tie_tolerance >= 0 and math.isfinite(self.tie_tolerance)):
            raise UserError(f"--tie_tolerance must be a finite number >= 0, got {self.tie_tolerance}")
        if self.diversity_resolution < 32:
            raise UserError(f"--diversity_resolution must be >= 32, got {self.diversity_resolution}")
        if self.diversity_metric not in ("lpips", "l2", "ssim"):
            raise UserError(f"--diversity_metric {self.diversity_metric!r}: use lpips, l2 or ssim")
        if not (self.originals_dir or self.base_dir or self.lora_dir or self.diversity_dir):
            raise UserError("nothing to evaluate: give --lora_dir, --base_dir and/or "
                            "--originals_dir (or --diversity_dir)")

    def folders(self) -> dict[str, Path]:
        named = {"original": self.originals_dir, "base": self.base_dir, "lora": self.lora_dir}
        return {k: Path(v).expanduser() for k, v in named.items() if v}


# --------------------------------------------------------------------------- rewards
def uses_input(spec: dict) -> bool:
    """Does this reward compare the image with the input (so scoring an original is moot)?
    The registry record says (a VLM or DreamSim term with a reference image does not)."""
    return reads_input(spec)


def collect_specs(flags, args: EvalArgs, device) -> tuple[list[dict], list[dict]]:
    """(target specs, check specs): what the user asked for, and the hacking monitors."""
    specs = list(reward_specs(flags, device=device))
    for name in [n.strip() for n in (args.rewards or "").split(",") if n.strip()]:
        if name not in available_rewards():
            raise UserError(f"--rewards: unknown reward {name!r}; known: {', '.join(available_rewards())}")
        specs.append({"name": name, "term": name, "weight": 1.0})
    if args.reward_spec:
        path = Path(args.reward_spec).expanduser()
        if not path.is_file():
            raise UserError(f"--reward_spec: file not found: {args.reward_spec}")
        try:
            extra = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"--reward_spec {args.reward_spec} is not valid JSON: {exc}") from None
        if isinstance(extra, dict):
            extra = [extra]
        if not isinstance(extra, list) or not all(isinstance(s, dict) and "name" in s for s in extra):
            raise UserError(f"--reward_spec {args.reward_spec}: expected a list of objects with a "
                            '"name" (registry name), e.g. [{"name": "grid", "weight": 1}]')
        specs += [{"term": s["name"], **s} for s in extra]
    seen = set()
    for s in specs:
        if s["term"] in seen:
            raise UserError(f"reward term {s['term']!r} is requested twice; give one of them a "
                            'different "term" name in --reward_spec')
        seen.add(s["term"])
    checks = []
    if args.hacking_check:
        # the training flags' own mapping (--grid_* / --brightness_*), with the terms switched on
        import dataclasses

        on = dataclasses.replace(flags, grid_ratio_weight=1.0, brightness_anchor_weight=1.0)
        checks = [dict(s, weight=1.0) for s in reward_specs(on, device=device)
                  if s["term"] in CHECK_TERMS and s["term"] not in seen]
    return specs, checks


def build_terms(specs: list[dict], checks: list[dict]) -> list[dict]:
    """Build every reward; a missing check term is a warning, a missing target an error."""
    built = []
    for role, group in (("target", specs), ("check", checks)):
        for spec in group:
            try:
                term = build_term(spec)
            except RewardBuildError as exc:
                if role == "check":
                    print(f"warning: hacking-check {exc}; not scored", file=sys.stderr)
                    continue
                raise
            built.append({"term": spec["term"], "reward": spec["name"], "weight": term.weight,
                          "role": role, "uses_input": uses_input(spec), "fn": term.fn,
                          "options": {k: v for k, v in spec.items()
                                      if k not in ("name", "term", "weight", "device")}})
    if not built:
        raise UserError("no reward to score: enable one with the training flags "
                        "(e.g. --similarity_backend lpips), --rewards or --reward_spec")
    return built


# --------------------------------------------------------------------------- pairing
def index_folder(folder: Path, label: str, recursive: bool = False,
                 exclude: Sequence[Path] = ()) -> tuple[dict[str, Path], list[dict]]:
    """stem under its sub-folder ("sub/cat") -> file of one folder; stems held by two files
    are reported, not guessed. Files under ``exclude`` (other folders) are not this folder's."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in list_images(folder, recursive=recursive, exclude=exclude):
        stem = Path(relative_name(p, folder)).with_suffix("").as_posix()
        if stem not in SKIP_FILES:
            by_stem[stem].append(p)
    ambiguous = [{"folder": label, "name": s, "reason": "several files with this name: "
                  + ", ".join(p.name for p in ps)} for s, ps in by_stem.items() if len(ps) > 1]
    return {s: ps[0] for s, ps in by_stem.items() if len(ps) == 1}, ambiguous


def inputs_flag(label: str) -> str:
    """The flag that names folder ``label`` ("original" -> --originals_dir)."""
    return "--originals_dir" if label == "original" else f"--{label}_dir"


def pair_folders(folders: dict[str, Path], recursive: bool = False, exclude: Sequence[Path] = ()
                 ) -> tuple[dict[str, dict[str, Path]], list[str], dict, list]:
    """({folder: {stem: path}}, names in every folder, {unpaired name: [folders]}, problems).

    A folder's index leaves out the other folders and ``exclude`` (the output folder) where
    they lie inside it."""
    index, problems = {}, []
    for label, folder in folders.items():
        others = [f for k, f in folders.items() if k != label] + list(exclude)
        index[label], amb = index_folder(folder, label, recursive, others)
        problems += amb
        if not index[label]:
            raise UserError(f"{inputs_flag(label)} {folder}"
                            f"{' or its sub-folders' if recursive else ''} holds no images")
    if "original" in index and len(index) > 1:
        _match_seed_outputs(index)
    every = set.union(*(set(v) for v in index.values()))
    common = sorted(set.intersection(*(set(v) for v in index.values())))
    unpaired = {n: sorted(k for k in index if n in index[k]) for n in sorted(every - set(common))}
    if not common:
        raise UserError("no file name is present in every folder (" + ", ".join(
            f"{k}: {len(v)} files" for k, v in index.items()) + "); outputs are paired with "
            "inputs by file stem (cat.jpg <-> cat.png)")
    return index, common, unpaired, problems


def _match_seed_outputs(index: dict[str, dict[str, Path]]) -> None:
    """Pair ``cat_seed3`` outputs (``generate --num_seeds``) with the original ``cat``."""
    orig = index["original"]
    outputs = set().union(*(set(v) for k, v in index.items() if k != "original"))
    used = set()
    for name in outputs - set(orig):
        m = _SEED_SUFFIX.match(name)
        if m and m["stem"] in orig:
            used.add(m["stem"])
            orig[name] = orig[m["stem"]]
    for stem in used - outputs:
        del orig[stem]


# --------------------------------------------------------------------------- scoring
def score_folders(terms: list[dict], index: dict, names: list[str], prompts: dict[str, str],
                  batch_size: int = 8, progress: bool = True):
    """Score every (folder, name). Returns (rows, unreadable).

    ``rows``: {(folder, name): {term: score or nan}}; unreadable files are left out
    and listed in ``unreadable`` as {folder, file, reason}.
    """
    from tqdm.auto import tqdm


    rows: dict[tuple[str, str], dict[str, float]] = {}
    unreadable: list[dict] = []
    bad_originals: set[str] = set()

    def original(name, shape):
        """The input of ``name`` at the output's size, decoded for this use only (no
        cache: memory stays flat in the number of images) and at reduced size when the
        output is much smaller than the original photo."""
        if "original" not in index or name in bad_originals:
            return None
        try:
            img = load_image(index["original"][name], reduce_to=min(shape[1:]))
        except (ImageLoadError, OSError) as exc:
            unreadable.append({"folder": "original", "file": str(index["original"][name]),
                               "reason": str(exc)})
            bad_originals.add(name)
            return None
        return resize_to(img, shape[1], shape[2], mode="crop")

    def score_items(t, x, inp, batch_prompts, files) -> list[float]:
        """One term's scores; an image the term refuses (a VLM's processor: too elongated)
        is NaN for that term and reported, never fatal to the folder."""
        try:
            with torch.no_grad():
                s, _ = t["fn"](x, inp, batch_prompts)
            return [float(v) + 0.0 for v in s.detach().float().cpu()]  # no -0.0
        except ValueError as exc:
            if len(files) == 1:
                unreadable.append({"folder": label, "file": str(files[0]),
                                   "reason": f"term {t['term']}: {' '.join(str(exc).split())}"})
                return [math.nan]
            return [v for i in range(len(files)) for v in score_items(
                t, x[i:i + 1], None if inp is None else inp[i:i + 1], batch_prompts[i:i + 1],
                files[i:i + 1])]

    total = len(names) * len(index)
    with tqdm(total=total, desc="evaluate", unit="img", disable=None if progress else True) as bar:
        for label in [f for f in FOLDERS if f in index]:
            pending: dict[tuple, list] = defaultdict(list)  # size -> [(name, image, input)]

            def flush(key):
                items = pending.pop(key)
                x = torch.stack([it[1] for it in items])
                ins = [it[2] for it in items]
                inp = torch.stack(ins) if all(i is not None for i in ins) else None
                batch_prompts = [prompts.get(it[0], "") for it in items]
                scores = {}
                for t in terms:
                    if t["uses_input"] and (label == "original" or inp is None):
                        scores[t["term"]] = [math.nan] * len(items)
                        continue
                    scores[t["term"]] = score_items(t, x, inp, batch_prompts,
                                                    [index[label][it[0]] for it in items])
                for i, it in enumerate(items):
                    rows[(label, it[0])] = {t["term"]: scores[t["term"]][i] for t in terms}
                bar.update(len(items))

            for name in names:
                path = index[label][name]
                try:
                    img = load_image(path)
                except (ImageLoadError, OSError) as exc:
                    unreadable.append({"folder": label, "file": str(path), "reason": str(exc)})
                    if label == "original":
                        bad_originals.add(name)
                    bar.update(1)
                    continue
                # An original scored as itself needs no input (input terms are NaN there).
                inp = None if label == "original" else original(name, img.shape)
                if label != "original" and "original" in index and inp is None:
                    bar.update(1)  # its original is unreadable: cannot be compared
                    continue
                key = tuple(img.shape)
                # A batch is capped in pixels too, so 100-MP photos are scored one at a
                # time and freed: peak memory does not grow with the number of images.
                if pending[key] and (len(pending[key]) + 1) * img[0].numel() > BATCH_PIXELS:
                    flush(key)
                pending[key].append((name, img, inp))
                n = len(pending[key])
                del img, inp
                if n >= batch_size or n * key[1] * key[2] >= BATCH_PIXELS:
                    flush(key)
            for key in list(pending):
                flush(key)
    return rows, unreadable


def total_score(row: dict[str, float], terms: list[dict]) -> float:
    """Weighted sum of the target terms (all terms when there are no targets)."""
    use = [t for t in terms if t["role"] == "target"] or terms
    vals = [t["weight"] * row[t["term"]] for t in use if not math.isnan(row[t["term"]])]
    return sum(vals) if len(vals) == len(use) else math.nan


# --------------------------------------------------------------------------- statistics
def describe(values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return {"n": 0}
    return {"n": len(vals), "mean": statistics.fmean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def win_rate(a: Sequence[float], b: Sequence[float], tie_tolerance: float = 1e-6) -> dict:
    """Paired win-rate of ``a`` over ``b`` (higher is better); a tie counts as half a win.

    ``ci95`` is the Wilson interval of the win-rate (ties counted as half).
    """
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    n = len(pairs)
    if n == 0:
        return {"n": 0}
    wins = sum(1 for x, y in pairs if x - y > tie_tolerance)
    losses = sum(1 for x, y in pairs if y - x > tie_tolerance)
    ties = n - wins - losses
    p = (wins + 0.5 * ties) / n
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"n": n, "win_rate": p, "wins": wins, "ties": ties, "losses": losses,
            "mean_diff": statistics.fmean(x - y for x, y in pairs),
            "ci95": [max(0.0, centre - half), min(1.0, centre + half)]}


def summarise(rows, terms, common, index, tie_tolerance) -> tuple[dict, dict, list[str]]:
    """(stats[folder][term], win_rates[comparison][term], names scored in every folder)."""
    labels = [f for f in FOLDERS if f in index]
    complete = [n for n in common if all((f, n) in rows for f in labels)]
    columns = [t["term"] for t in terms] + ["total"]
    stats = {f: {c: describe([rows[(f, n)][c] for n in complete]) for c in columns} for f in labels}
    wins: dict[str, dict] = {}
    for a, b in COMPARISONS:
        if a in index and b in index:
            wins[f"{a}_vs_{b}"] = {
                c: win_rate([rows[(a, n)][c] for n in complete], [rows[(b, n)][c] for n in complete],
                            tie_tolerance)
                for c in columns
                if b != "original" or (c != "total" and not _term(terms, c)["uses_input"])}
    return stats, wins, complete


def _term(terms, name):
    return next(t for t in terms if t["term"] == name)


# --------------------------------------------------------------------------- outputs
def write_tables(out: Path, rows, terms, index, stats, wins) -> None:
    columns = [t["term"] for t in terms] + ["total"]
    records = [{"name": n, "folder": f, "file": str(index[f][n]),
                **{c: r[c] for c in columns}} for (f, n), r in sorted(rows.items(), key=lambda kv: (
                    kv[0][1], FOLDERS.index(kv[0][0])))]
    with open(out / "scores.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "folder", "file"] + columns)
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    (out / "scores.json").write_text(json.dumps(_json_safe(records), indent=1))
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["folder", "term", "n", "mean", "std", "median", "min", "max"])
        for f, per in stats.items():
            for c, s in per.items():
                w.writerow([f, c] + [s.get(k, "") for k in ("n", "mean", "std", "median", "min", "max")])
    with open(out / "win_rates.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["comparison", "term", "n", "win_rate", "wins", "ties", "losses", "mean_diff",
                    "ci95_low", "ci95_high"])
        for comp, per in wins.items():
            for c, s in per.items():
                ci = s.get("ci95", ["", ""])
                w.writerow([comp, c] + [s.get(k, "") for k in ("n", "win_rate", "wins", "ties",
                                                               "losses", "mean_diff")] + ci)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_plots(out: Path, rows, terms, complete, index) -> list[str]:
    """distributions.png (per-term histograms per folder), paired_scatter.png (LoRA vs base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f for f in FOLDERS if f in index]
    columns = [t["term"] for t in terms] + ["total"]
    written = []
    ncol = min(3, len(columns))
    nrow = math.ceil(len(columns) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    import numpy as np

    for ax, c in zip(axes.flat, columns):
        per = {f: [rows[(f, n)][c] for n in complete if math.isfinite(rows[(f, n)][c])] for f in labels}
        everything = [v for vals in per.values() for v in vals]
        if everything:  # one set of bins for every folder, so the bars compare
            lo, hi = min(everything), max(everything)
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, min(20, max(3, len(complete))) + 1)
        for f, vals in per.items():
            if vals:
                ax.hist(vals, bins=bins, alpha=0.5, label=f"{f} (n={len(vals)})")
        ax.set_title(c + (" [check]" if c != "total" and _term(terms, c)["role"] == "check" else ""))
        ax.set_xlabel("score (higher is better)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "distributions.png", dpi=90)
    plt.close(fig)
    written.append("distributions.png")
    if "lora" in index and "base" in index:
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
        for ax, c in zip(axes.flat, columns):
            pts = [(rows[("base", n)][c], rows[("lora", n)][c]) for n in complete]
            pts = [p for p in pts if all(map(math.isfinite, p))]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, s=12)
                lo, hi = min(x + y), max(x + y)
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(c)
            ax.set_xlabel("base")
            ax.set_ylabel("LoRA (above the line = LoRA better)")
        for ax in list(axes.flat)[len(columns):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "paired_scatter.png", dpi=90)
        plt.close(fig)
        written.append("paired_scatter.png")
    return written


def print_report(stats, wins, terms, unpaired, unreadable, problems, diversity) -> None:
    labels = list(stats)
    columns = [t["term"] for t in terms] + ["total"] if terms else []
    out = sys.stdout
    head = f"{'term':<22}" + "".join(f"{f + ' mean±std':>24}" for f in labels)
    head += "".join(f"{k:>18}" for k in wins)
    if columns:
        print(head, file=out)
    for c in columns:
        role = "" if c == "total" else (" (check)" if _term(terms, c)["role"] == "check" else "")
        line = f"{(c + role)[:22]:<22}"
        for f in labels:
            s = stats[f][c]
            line += f"{s['mean']:>13.4f}±{s['std']:<10.4f}" if s.get("n") else f"{'-':>24}"
        for per in wins.values():
            w = per.get(c, {})
            line += f"{w['win_rate']:>18.3f}" if w.get("n") else f"{'-':>18}"
        print(line, file=out)
    for name, held in list(unpaired.items())[:10]:
        print(f"unpaired: {name} only in {', '.join(held)}", file=sys.stderr)
    if len(unpaired) > 10:
        print(f"unpaired: ... {len(unpaired) - 10} more (see summary.json)", file=sys.stderr)
    for u in unreadable:
        print(f"unreadable ({u['folder']}): {u['file']}: {u['reason']}", file=sys.stderr)
    for p in problems:
        print(f"skipped ({p['folder']}): {p['name']}: {p['reason']}", file=sys.stderr)
    for label, d in diversity.items():
        print(f"diversity {label}: {d['mean']:.4f} ± {d['std']:.4f} over {d['n']} inputs "
              f"({d['layout']})", file=out)


# --------------------------------------------------------------------------- CLI
def build_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser([RewardFlags, EvalArgs], prog="python -m alignprop.evaluate",
                            description=__doc__.split("\n\n")[0])


def parse_args(argv: Sequence[str] | None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        loader = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        return loader(argv[0])
    # two names of one flag must agree (--recursive / --no_recursive), checked before the
    # dataclasses validate what one of them said
    given = record_given(parser)
    parser.parse_known_args(argv)
    resolve_source(given)
    return parser.parse_args_into_dataclasses(args=argv)


def parse_diversity_dirs(values: list[str]) -> dict[str, Path]:
    out = {}
    for v in values:
        label, sep, path = v.partition("=")
        if not sep:
            label, path = Path(v).name or v, v
        if label in out:
            raise UserError(f"--diversity_dir: label {label!r} given twice; use LABEL=DIR")
        out[label] = Path(path).expanduser()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    flags, args = parse_args(argv)
    device, _ = resolve_device_dtype(args.device, "float32")
    out = Path(args.output_dir).expanduser()
    folders = args.folders()
    # Tables and plots never land among (or over) the images being evaluated, and an
    # unwritable --output_dir is found before any reward model loads.
    inputs = {inputs_flag(k): v for k, v in folders.items()}
    if args.diversity_dir:
        inputs.update({f"--diversity_dir {k}": v
                       for k, v in parse_diversity_dirs(args.diversity_dir).items()})
    check_outputs_spare_inputs({"--output_dir": out}, inputs)
    # every path a flag names, before any reward model loads (one line naming the flag)
    check_paths([*((flag, "dir", d) for flag, d in inputs.items()),
                 ("--reward_spec", "file", args.reward_spec),
                 ("--prompt_file", "file", args.prompt_file)])
    if args.diversity_dir and args.diversity_metric == "lpips" and args.lpips_pretrained:
        check_paths([("--lpips_backbone", "path", flags.lpips_backbone)])
    check_writable_dir("--output_dir", out)
    summary: dict[str, Any] = {"folders": {k: str(v) for k, v in folders.items()}}
    t0 = time.time()
    stats, wins, terms, unpaired, unreadable, problems = {}, {}, [], {}, [], []
    if folders:
        index, common, unpaired, problems = pair_folders(folders, args.recursive, [out])
        for label, folder in folders.items():
            counts = folder_counts(index[label].values(), folder) if args.recursive else None
            if counts:
                print(f"{inputs_flag(label)}: {counts}", file=sys.stderr)
        specs, checks = collect_specs(flags, args, device)
        check_reward_specs(specs + checks)   # the registry says which options name files
        terms = build_terms(specs, checks)
        need_input = [t["term"] for t in terms if t["uses_input"]]
        if need_input and "original" not in index:
            raise UserError(f"reward term(s) {', '.join(need_input)} compare each output with its "
                            "input: give the inputs with --originals_dir")
        prompts = {}
        if args.prompt or args.prompt_file:
            first = next(iter(index))
            files = {n: relative_name(index[first][n], folders[first]) for n in common}
            by_file = read_prompts(args.prompt, args.prompt_file, list(files.values()))
            prompts = {n: by_file[f] for n, f in files.items()}
        rows, unreadable = score_folders(terms, index, common, prompts, args.batch_size)
        for r in rows.values():
            r["total"] = total_score(r, terms)
        stats, wins, complete = summarise(rows, terms, common, index, args.tie_tolerance)
        if not complete:
            raise UserError("no name could be scored in every folder (see the unreadable files above)")
        out.mkdir(parents=True, exist_ok=True)
        write_tables(out, rows, terms, index, stats, wins)
        summary.update({
            "n_scored": len(complete),
            "terms": [{k: v for k, v in t.items() if k != "fn"} for t in terms],
            "total": "weighted sum of the target terms" if any(t["role"] == "target" for t in terms)
                     else "weighted sum of the check terms (no target reward given)",
            "stats": stats, "win_rates": wins,
            "unpaired": unpaired, "unreadable": unreadable, "ambiguous": problems,
        })
        if args.plots:
            summary["plots"] = write_plots(out, rows, terms, complete, index)
    diversity = {}
    if args.diversity_dir:
        div_dirs = parse_diversity_dirs(args.diversity_dir)
        for folder in div_dirs.values():  # check the layouts before loading a model
            group_seed_outputs(folder)
        dist = build_metric(args.diversity_metric, net=flags.lpips_net,
                            pretrained=args.lpips_pretrained, device=device,
                            backbone_path=flags.lpips_backbone)  # reward flag: one LPIPS
        for label, folder in div_dirs.items():
            diversity[label] = folder_diversity(folder, dist, args.diversity_resolution)
            diversity[label]["metric"] = args.diversity_metric
        summary["diversity"] = diversity
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "diversity.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["label", "name", "n_samples", "diversity", "metric"])
            for label, d in diversity.items():
                for name, v in d["per_input"].items():
                    w.writerow([label, name, v["n_samples"], v["diversity"], args.diversity_metric])
    summary["seconds"] = round(time.time() - t0, 2)
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    print_report(stats, wins, terms, unpaired, unreadable, problems, diversity)
    print(f"results in {out}", file=sys.stderr)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv, "alignprop.evaluate")


if __name__ == "__main__":
    sys.exit(cli())
