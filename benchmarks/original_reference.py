#!/usr/bin/env python
"""Reference values from the original project's own code (tests/data/original_reference.json).

    python benchmarks/original_reference.py --original_repo DIR [--out FILE] [--skip_benchmark]

``DIR`` is a clone of the original ``promptable-differentiable-rewards`` repository (Apache-2.0).
Its modules are imported from there and run as they are; nothing of it is copied here. Its
benchmark needs pandas (``pip install pandas`` into the interpreter that runs this script).
Its trainer imports a TRL fork that no longer exists; to call its reward function
(``alignprop_fluxkontext.combined_reward``) the names it imports from ``trl`` are given
empty stand-ins (none of them is used by that function).

Every input is rebuilt from scikit-image's bundled photos by :func:`build_image` (a crop, an
exposure gain, an added grid, or a flat colour; quantised to uint8), so tests can rebuild the
exact pixels; the SHA-256 of each uint8 array is stored beside it. The original's own example
photos (``media/before_1..3.png``) are measured too, for the record: tests cannot rebuild them.

VLM figures use the project's tiny InternVL (``rewards.vlm_families.internvl.build_tiny_internvl``,
fixed seed) saved with ``save_pretrained``, loaded by the original's code with its
``AutoProcessor`` / ``AutoModelForImageTextToText``. The question text matters to the model, and
the original's questions cannot be copied into this project, so every VLM figure is recorded
twice: with the original's own question (only its SHA-256 is stored) and with a short question
of ours (stored), substituted in the chat messages the original builds. Tests compare against
the second; ``--original_repo`` users can compare against the first.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "data" / "original_reference.json"
ORIGINAL_FILES = ("alignprop_fluxkontext.py", "anti_periodic_loss.py", "benchmark_anti_periodic.py",
                  "internvl_scorer.py")

# --------------------------------------------------------------------------- inputs
# Each image is a dict: {"photo": skimage.data name, "crop": [top, left, h, w] (optional),
# "gain": g (optional), "grid": {"kind": "lines"|"sinusoid", "period": p, "amplitude": a}
# (optional)} or {"flat": v, "size": [h, w]}. Transforms are applied in float64 on the uint8/255
# values in this order: gain, grid, clip to [0, 1], round(x * 255) to uint8.
IMAGES: dict[str, dict] = {
    "astronaut": {"photo": "astronaut"},
    "camera": {"photo": "camera"},
    "chelsea": {"photo": "chelsea"},
    "coffee": {"photo": "coffee"},
    "rocket": {"photo": "rocket"},
    "moon": {"photo": "moon"},
    "brick": {"photo": "brick"},
    "hubble_crop": {"photo": "hubble_deep_field", "crop": [180, 244, 512, 512]},
    "astronaut_gain0.5": {"photo": "astronaut", "gain": 0.5},
    "astronaut_gain1.6": {"photo": "astronaut", "gain": 1.6},
    "flat0.10": {"flat": 0.10, "size": [512, 512]},
    "flat0.25": {"flat": 0.25, "size": [512, 512]},
    "flat0.50": {"flat": 0.50, "size": [512, 512]},
    "flat0.90": {"flat": 0.90, "size": [512, 512]},
    "astronaut_lines16_a0.03": {"photo": "astronaut",
                                "grid": {"kind": "lines", "period": 16, "amplitude": 0.03}},
    "astronaut_sin16_a0.02": {"photo": "astronaut",
                              "grid": {"kind": "sinusoid", "period": 16, "amplitude": 0.02}},
    "camera_lines16_a0.03": {"photo": "camera",
                             "grid": {"kind": "lines", "period": 16, "amplitude": 0.03}},
    "coffee_sin16_a0.02": {"photo": "coffee",
                           "grid": {"kind": "sinusoid", "period": 16, "amplitude": 0.02}},
    "chelsea_lines16_a0.03": {"photo": "chelsea",
                              "grid": {"kind": "lines", "period": 16, "amplitude": 0.03}},
    "hubble_crop_sin16_a0.05": {"photo": "hubble_deep_field", "crop": [180, 244, 512, 512],
                                "grid": {"kind": "sinusoid", "period": 16, "amplitude": 0.05}},
}


def _photo(name: str) -> np.ndarray:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


def build_image(spec: dict) -> np.ndarray:
    """(H, W, 3) uint8 array described by ``spec`` (see IMAGES)."""
    if "flat" in spec:
        h, w = spec["size"]
        return np.full((h, w, 3), int(round(spec["flat"] * 255)), dtype=np.uint8)
    arr = _photo(spec["photo"])
    if "crop" in spec:
        t, left, h, w = spec["crop"]
        arr = arr[t:t + h, left:left + w]
    if "gain" not in spec and "grid" not in spec:
        return np.ascontiguousarray(arr)
    x = arr.astype(np.float64) / 255.0
    x = x * float(spec.get("gain", 1.0))
    grid = spec.get("grid")
    if grid:
        h, w = x.shape[:2]
        i = np.arange(h)[:, None]
        j = np.arange(w)[None, :]
        p, a = grid["period"], grid["amplitude"]
        if grid["kind"] == "lines":
            pat = ((i % p == 0) | (j % p == 0)).astype(np.float64)
        elif grid["kind"] == "sinusoid":
            pat = 0.5 * (np.cos(2 * np.pi * i / p) + np.cos(2 * np.pi * j / p))
        else:
            raise ValueError(f"unknown grid kind {grid['kind']!r}")
        x = x + a * pat[..., None]
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# --------------------------------------------------------------------------- the original
def import_original(repo: Path):
    """(combined_reward module, anti_periodic_loss module, internvl_scorer module) from ``repo``."""
    for name in ORIGINAL_FILES:
        if not (repo / name).is_file():
            raise SystemExit(f"--original_repo: {repo} has no {name}; pass a clone of "
                             f"promptable-differentiable-rewards")
    # The trainer module imports these from the TRL fork; combined_reward uses none of them.
    trl = types.ModuleType("trl")
    trl.AlignPropConfig = trl.AlignPropTrainerFluxKontext = object
    aux = types.ModuleType("trl.models.auxiliary_modules")
    aux.aesthetic_scorer = None
    kontext = types.ModuleType("trl.models.modeling_flux_kontext")
    kontext.DDPOFluxKontextPipeline = object
    models = types.ModuleType("trl.models")
    sys.modules.update({"trl": trl, "trl.models": models, "trl.models.auxiliary_modules": aux,
                        "trl.models.modeling_flux_kontext": kontext})
    sys.path.insert(0, str(repo))
    from accelerate import PartialState

    PartialState()   # the original's logger (accelerate) needs it, as its main() creates it
    import alignprop_fluxkontext
    import anti_periodic_loss
    import internvl_scorer
    return alignprop_fluxkontext, anti_periodic_loss, internvl_scorer


def original_identity(repo: Path) -> dict:
    out = {"repository": "https://github.com/andjoer/promptable-differentiable-rewards",
           "files_sha256": {n: hashlib.sha256((repo / n).read_bytes()).hexdigest()
                            for n in ORIGINAL_FILES}}
    try:
        out["commit"] = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                                       capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = None
    return out


# --------------------------------------------------------------------------- anchors and grid
README_SETTINGS = {
    "name": "readme",
    "flags": "--grid_ratio_weight 1 --grid_ratio_period 16 --grid_ratio_max_harm 3 "
             "--grid_ratio_sigma_bins 0.8 --grid_eval_resize 512 --brightness_target 0.45 "
             "--brightness_band 0.08 --brightness_anchor_weight 10 (crispness_anchor_weight and "
             "grid_ratio_tau at their defaults 0.2 and 2e-4)",
    "grid_config": {"weight": 1.0, "period": 16, "max_harm": 3, "sigma_bins": 0.8, "tau": 2e-4,
                    "eval_resize": 512},
    "brightness_config": {"target": 0.45, "band": 0.08, "weight": 10.0, "crisp_weight": 0.2},
}
DEFAULT_SETTINGS = {
    "name": "defaults",
    "flags": "(no flags: ScriptArguments defaults)",
    "grid_config": {"weight": 0.0, "period": 16, "max_harm": 3, "sigma_bins": 0.8, "tau": 2e-4,
                    "eval_resize": 512},
    "brightness_config": {"target": 0.50, "band": 0.06, "weight": 0.2, "crisp_weight": 0.2},
}
ANCHOR_IMAGES = ("astronaut", "camera", "chelsea", "coffee", "rocket", "moon", "brick",
                 "hubble_crop", "astronaut_gain0.5", "astronaut_gain1.6", "flat0.10", "flat0.25",
                 "flat0.50", "flat0.90")
GRID_IMAGES = ("astronaut_lines16_a0.03", "astronaut_sin16_a0.02", "camera_lines16_a0.03",
               "coffee_sin16_a0.02", "chelsea_lines16_a0.03", "hubble_crop_sin16_a0.05")
BATCHES = (("astronaut", "hubble_crop"), ("flat0.10", "flat0.50"))


def run_combined(mod, x01: torch.Tensor, settings: dict) -> dict:
    """The original's combined_reward with no learned terms: anchors and grid only."""
    b = x01.shape[0]

    def no_aesthetic(images, prompts, metadata):
        return torch.zeros(images.shape[0], dtype=torch.float32), {}

    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        reward, meta = mod.combined_reward(
            x01 * 2 - 1, None, ("",) * b, ({},) * b, aest_fn=no_aesthetic, sim_fn=None,
            scale_aest=0.0, scale_img=0.0, grid_config=dict(settings["grid_config"]),
            brightness_config=dict(settings["brightness_config"]))
    values = {k: float(v) for k, v in meta.items()
              if k not in ("aesthetic", "similarity", "photorealism", "sharpness")}
    values["reward"] = [float(r) for r in reward]
    return values


def anchors_and_grid(mod, apl) -> list[dict]:
    rows = []
    names = [(n,) for n in ANCHOR_IMAGES + GRID_IMAGES] + [tuple(b) for b in BATCHES]
    for settings in (README_SETTINGS, DEFAULT_SETTINGS):
        for batch in names:
            if settings is DEFAULT_SETTINGS and batch[0] in GRID_IMAGES:
                continue
            x = torch.stack([to_tensor(build_image(IMAGES[n])) for n in batch])
            rows.append({
                "images": list(batch), "settings": settings["name"],
                "input": "combined_reward(images = x * 2 - 1), x = uint8 / 255 (the [-1, 1] range "
                         "its docstring names); penalties are batch means",
                "values": run_combined(mod, x, settings),
                "source": "alignprop_fluxkontext.py::combined_reward",
            })
    # the anchor functions themselves at the image's own size (no eval resize, no batch mean)
    for n in ANCHOR_IMAGES:
        x = to_tensor(build_image(IMAGES[n]))[None]
        for s in (README_SETTINGS, DEFAULT_SETTINGS):
            bc = s["brightness_config"]
            rows.append({
                "images": [n], "settings": s["name"], "input": "x = uint8 / 255, native size",
                "values": {
                    "mean_luma_band": float(apl.mean_luma_band(x, target=bc["target"],
                                                               band=bc["band"], weight=1.0)),
                    "tenengrad_floor_loss": float(apl.tenengrad_floor_loss(x, floor=1.5e-3,
                                                                           weight=0.25)),
                },
                "source": "anti_periodic_loss.py::mean_luma_band, ::tenengrad_floor_loss "
                          "(arguments as combined_reward passes them)",
            })
    return rows


def original_photos(repo: Path, mod, apl) -> list[dict]:
    """The original's before_1..3 (informational: not rebuildable from bundled photos)."""
    from PIL import Image

    rows = []
    for i in (1, 2, 3):
        path = repo / "media" / f"before_{i}.png"
        if not path.is_file():
            continue
        arr = np.asarray(Image.open(path).convert("RGB"))
        x = to_tensor(arr)[None]
        for s in (README_SETTINGS, DEFAULT_SETTINGS):
            bc = s["brightness_config"]
            rows.append({
                "file": f"media/before_{i}.png",
                "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "settings": s["name"],
                "combined_reward": run_combined(mod, x, s),
                "mean_luma_band_native": float(apl.mean_luma_band(x, target=bc["target"],
                                                                  band=bc["band"], weight=1.0)),
                "mean_luma_band_if_images_were_0_1": float(apl.mean_luma_band(
                    (x + 1) / 2, target=bc["target"], band=bc["band"], weight=1.0)),
            })
    return rows


# --------------------------------------------------------------------------- InternVL scorer
# Our own short questions, substituted for the original's in the messages it builds.
QUESTIONS = {
    "single": "How good is this photo? Rate from 0 to 9 and answer with a single number.",
    "sharpness": "How sharp is this photo? Rate from 0 to 9 and answer with a single number.",
    "artifact": "How free of grid patterns is this photo? Rate from 0 to 9, one number.",
    "artifact_refs": "Images 1 and 2 show a grid artifact. How free of it is image 3? "
                     "Rate from 0 to 9, one number.",
    "similarity": "How similar in style are the two photos? Rate from 0 to 9, one number.",
    "content-similarity": "How similar in content are the two photos? Rate from 0 to 9, "
                          "one number.",
    "pair": "Which photo is better? Answer 1 for the first, 2 for the second.",
    "triplet": "Which of photos 2 and 3 is closer in style to photo 1? Answer 1 for photo 2, "
               "2 for photo 3.",
}
TASK_IMAGES = {"single": ("chelsea",), "sharpness": ("camera",), "artifact": ("brick",),
               "similarity": ("astronaut", "camera"),
               "content-similarity": ("coffee", "astronaut_gain0.5"),
               "pair": ("astronaut", "astronaut_gain0.5"),
               "triplet": ("astronaut", "camera", "astronaut_gain1.6")}
# (task, objective, calibration, temperature, margin_temp, entropy_coef)
CALIBRATIONS = ("none", "pmi_null")
SCORER_SETTINGS = (
    [(t, "expected", c, 1.0, 1.0, 0.0) for t in TASK_IMAGES for c in CALIBRATIONS]
    + [(t, "margin", c, 1.0, 2.0, 0.0) for t in ("single", "similarity") for c in CALIBRATIONS]
    + [("single", "expected", c, 1.0, 1.0, 0.1) for c in CALIBRATIONS]
    + [("similarity", "expected", "pmi_null", 1.0, 1.0, 0.1)]
    + [("pair", "expected", "pmi_null", 1.0, 2.0, 0.1)]
    + [("triplet", "expected", "none", 1.0, 2.0, 0.0)]
    + [("single", "expected", "pmi_null", 2.0, 1.0, 0.0)]
    + [("single", "margin", "none", 0.5, 1.0, 0.0)]
)


class QuestionSwap:
    """The original's processor with the question text of its chat messages replaced.

    Everything else (template call, placeholders, image slots) is the original's; the text it
    wrote is only hashed (``seen``)."""

    def __init__(self, processor, question: str | None):
        self._processor, self._question, self.seen = processor, question, set()

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def __call__(self, *args, **kwargs):
        return self._processor(*args, **kwargs)

    def apply_chat_template(self, messages, *args, **kwargs):
        messages = copy.deepcopy(messages)
        for message in messages:
            for part in message["content"]:
                if part.get("type") == "text":
                    self.seen.add(hashlib.sha256(part["text"].encode()).hexdigest())
                    if self._question is not None:
                        part["text"] = self._question
        return self._processor.apply_chat_template(messages, *args, **kwargs)


def save_tiny_internvl(folder: Path) -> dict:
    from rewards.vlm_families.internvl import build_tiny_internvl

    model, processor = build_tiny_internvl()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    checksum = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
    return {"builder": "rewards.vlm_families.internvl.build_tiny_internvl() (seed 0), saved with "
                       "save_pretrained (model and processor)",
            "param_abs_sum": checksum,
            "num_parameters": int(sum(p.numel() for p in model.parameters()))}


def scorer_function(scorer_mod, model_dir: Path) -> list[dict]:
    """make_reward_fn on tensors: what the original's trainer scored."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    rows = []
    refs = tuple(to_tensor(build_image(IMAGES[n])) * 2 - 1
                 for n in ("astronaut_lines16_a0.03", "camera_lines16_a0.03"))
    for task, objective, calibration, temperature, margin_temp, entropy in SCORER_SETTINGS:
        variants = [(task, None)]
        if task == "artifact" and calibration == "pmi_null" and entropy == 0:
            variants.append(("artifact", refs))
        for t, art in variants:
            names = TASK_IMAGES[t]
            for size in ((512, 512),) if t != "single" else ((512, 512), "native"):
                imgs = []
                for n in names:
                    x = to_tensor(build_image(IMAGES[n]))
                    if size != "native":
                        x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear",
                                                            align_corners=False)[0]
                    imgs.append(x)
                batch = torch.stack(imgs)[None] * 2 - 1          # (1, N, 3, H, W) in [-1, 1]
                entry = {"task": t, "objective": objective, "calibration": calibration,
                         "temperature": temperature, "margin_temp": margin_temp,
                         "entropy_coef": entropy, "images": list(names),
                         "resize": (None if size == "native" else
                                    {"size": list(size), "how": "torch bilinear, "
                                     "align_corners=False, no antialias, from uint8 / 255"}),
                         "input": "(1, N, 3, H, W) = x * 2 - 1",
                         "artifact_refs": (["astronaut_lines16_a0.03", "camera_lines16_a0.03"]
                                           if art is not None else None),
                         "source": "internvl_scorer.py::make_reward_fn (scorer(images, prompts))"}
                qkey = "artifact_refs" if art is not None else t
                for label, question in (("ours", QUESTIONS[qkey]), ("original", None)):
                    proxy = QuestionSwap(processor, question)
                    fn = scorer_mod.make_reward_fn(
                        model_id=str(model_dir), task=t, objective=objective,
                        temperature=temperature, calibration=calibration,
                        margin_temp=margin_temp, entropy_coef=entropy, device="cpu",
                        dtype=torch.float32, artifact_refs=art, processor=proxy, model=model)
                    with torch.no_grad():
                        score, aux = fn(batch, ("",), None)
                    result = {"score": float(score[0])}
                    for key in ("grade_probs", "pair_probs_a", "pair_probs_b",
                                "pair_probs_combined"):
                        if key in aux:
                            result[key] = [float(v) for v in aux[key][0]]
                    if label == "ours":
                        entry["question"] = question
                        entry.update(result)
                    else:
                        entry["original_question_sha256"] = sorted(proxy.seen)
                        entry["with_original_question"] = result
                rows.append(entry)
    return rows


def answer_token_ids(scorer_mod, model_dir: Path) -> dict:
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(model_dir).tokenizer
    return {"grades": {g: scorer_mod._token_ids(g, tok) for g in map(str, range(10))},
            "pair": {t: scorer_mod._token_ids(t, tok) for t in ("1", "2")},
            "source": "internvl_scorer.py::_token_ids (last token of 'x', ' x', '\\nx')"}


SCORER_CLI = (
    (["single_a.png"], ["--entropy_coef", "0.1"]),
    (["single_a.png"], ["--calibration", "pmi_null", "--print_probs"]),
    (["single_a.png"], ["--calibration", "pmi_null", "--entropy_coef", "0.1"]),
    (["single_a.png", "single_b.png"], ["--task", "sharpness", "--calibration", "pmi_null"]),
    (["pair_a.png", "pair_b.png"], ["--task", "pair", "--calibration", "pmi_null",
                                    "--print_probs"]),
    (["pair_a.png", "pair_b.png"], ["--task", "similarity", "--objective", "margin"]),
)
CLI_FILES = {"single_a.png": "chelsea", "single_b.png": "rocket", "pair_a.png": "astronaut",
             "pair_b.png": "coffee"}


def scorer_cli(scorer_mod, model_dir: Path, work: Path) -> list[dict]:
    """The original scorer's main() on PNG files (its load_img stretches them to 512 x 1024)."""
    for fname, name in CLI_FILES.items():
        save_png(build_image(IMAGES[name]), work / fname)
    rows = []
    real_auto = scorer_mod.AutoProcessor
    for files, flags in SCORER_CLI:
        task = flags[flags.index("--task") + 1] if "--task" in flags else "single"
        entry = {"argv": [*files, "--model_id", "TINY_INTERNVL", "--device", "cpu", *flags],
                 "files": {f: CLI_FILES[f] for f in files},
                 "source": "internvl_scorer.py::main"}
        for label, question in (("ours", QUESTIONS[task]), ("original", None)):
            class Swapped:
                @staticmethod
                def from_pretrained(*a, **k):
                    return QuestionSwap(real_auto.from_pretrained(*a, **k), question)

            scorer_mod.AutoProcessor = Swapped
            argv = [str(work / f) for f in files] + ["--model_id", str(model_dir), "--device",
                                                      "cpu", *flags]
            out = io.StringIO()
            old_argv = sys.argv
            sys.argv = ["internvl_scorer.py", *argv]
            try:
                with contextlib.redirect_stdout(out), torch.no_grad():
                    scorer_mod.main()
            finally:
                sys.argv = old_argv
                scorer_mod.AutoProcessor = real_auto
            lines = out.getvalue().splitlines()
            if label == "ours":
                entry["question"] = question
                entry["stdout"] = lines
            else:
                entry["stdout_with_original_question"] = lines
        rows.append(entry)
    return rows


# --------------------------------------------------------------------------- benchmark
BENCH_LAYOUT = {
    "artifact/astronaut_lines16.png": "astronaut_lines16_a0.03",
    "artifact/camera_lines16.png": "camera_lines16_a0.03",
    "artifact/sub/coffee_sin16.png": "coffee_sin16_a0.02",
    "artifact/sub/deeper/chelsea_lines16.png": "chelsea_lines16_a0.03",
    "no_artifact/astronaut.png": "astronaut",
    "no_artifact/camera.png": "camera",
    "no_artifact/sub/coffee.png": "coffee",
    "no_artifact/sub/astronaut.png": "astronaut_gain0.5",
    "no_artifact/sub/deeper/chelsea.png": "chelsea",
}
# Few images, for runs a test can repeat: subfolders, and two files named astronaut.png.
BENCH_SMALL_LAYOUT = {
    "artifact/astronaut_lines16.png": "astronaut_lines16_a0.03",
    "artifact/sub/coffee_sin16.png": "coffee_sin16_a0.02",
    "no_artifact/astronaut.png": "astronaut",
    "no_artifact/sub/astronaut.png": "astronaut_gain0.5",
    "no_artifact/sub/deeper/chelsea.png": "chelsea",
}
# a 16 x 16 template: one bright row and column on grey (saved as a PNG)
TEMPLATE = {"what": "16x16x3 uint8, 128 everywhere, 255 on row 0 and column 0", "file": "t16.png"}


def template_png() -> np.ndarray:
    t = np.full((16, 16, 3), 128, dtype=np.uint8)
    t[0, :] = 255
    t[:, 0] = 255
    return t


BENCH_RUNS = (
    {"name": "defaults", "layout": BENCH_LAYOUT, "folders": ("artifact", "no_artifact"),
     "argv": []},
    {"name": "small", "layout": BENCH_SMALL_LAYOUT, "folders": ("artifact", "no_artifact"),
     "argv": ["--resize", "128", "--window", "64", "--hop", "32", "--template_16", "t16.png"]},
    {"name": "small_options", "layout": BENCH_SMALL_LAYOUT,
     "folders": ("artifact", "no_artifact"),
     "argv": ["--resize", "128", "--window", "64", "--hop", "16", "--combo_mode", "abs",
              "--tau", "1e-4", "--tau_global", "1e-3", "--tau_local", "1e-3", "--w_local", "0.5",
              "--max_harm", "3", "--sigma_bins", "0.8", "--edge_penalty", "4", "--period", "8",
              "--selective_top_p", "0.5", "--selective_coverage_alpha", "0.7", "--proj_harmonics",
              "1,2", "--proj_top_p", "0.25", "--no_proj_detach_norm", "--out", "o/per.csv",
              "--summary_out", "o/sum.csv"]},
    {"name": "small_native", "layout": BENCH_SMALL_LAYOUT, "folders": ("artifact", "no_artifact"),
     "argv": ["--resize", "0", "--window", "64", "--hop", "64"]},
    {"name": "readme", "layout": BENCH_SMALL_LAYOUT, "folders": ("artifacts", "clean_images"),
     "argv": ["--artifacts_dir", "./artifacts", "--clean_dir", "./clean_images", "--out",
              "results.csv"]},
)


def _read_csv(path: Path) -> dict:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))

    def cell(v):
        try:
            return float(v) if v != "" else None
        except ValueError:
            return v

    return {"header": rows[0], "rows": [[cell(v) for v in r] for r in rows[1:]]}


def benchmark(repo: Path, work: Path, python: str) -> list[dict]:
    results = []
    for run in BENCH_RUNS:
        d = work / f"bench_{run['name']}"
        for rel, name in run["layout"].items():
            top, rest = rel.split("/", 1)
            folder = run["folders"][0] if top == "artifact" else run["folders"][1]
            save_png(build_image(IMAGES[name]), d / folder / rest)
        save_png(template_png(), d / TEMPLATE["file"])
        before = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
        t0 = time.time()
        proc = subprocess.run([python, str(repo / "benchmark_anti_periodic.py"), *run["argv"]],
                              cwd=d, capture_output=True, text=True,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        if proc.returncode != 0:
            raise SystemExit(f"original benchmark failed ({run['name']}):\n{proc.stderr[-3000:]}")
        written = sorted({p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
                         - before)
        out_name = (run["argv"][run["argv"].index("--out") + 1] if "--out" in run["argv"]
                    else "anti_periodic_per_image.csv")
        sum_name = (run["argv"][run["argv"].index("--summary_out") + 1]
                    if "--summary_out" in run["argv"] else "anti_periodic_summary.csv")
        results.append({
            "name": run["name"],
            "command": " ".join(["python", "benchmark_anti_periodic.py", *run["argv"]]),
            "cwd_layout": {rel.replace("artifact/", run["folders"][0] + "/", 1)
                           if rel.startswith("artifact/") else
                           rel.replace("no_artifact/", run["folders"][1] + "/", 1): name
                           for rel, name in run["layout"].items()},
            "template_16": TEMPLATE,
            "files_written": written,
            "per_image_file": out_name, "summary_file": sum_name,
            "per_image": _read_csv(d / out_name),
            "summary": _read_csv(d / sum_name),
            "seconds": round(time.time() - t0, 1),
            "source": "benchmark_anti_periodic.py::main (subprocess)",
        })
    return results


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original_repo", type=Path, required=True,
                   help="a clone of promptable-differentiable-rewards")
    p.add_argument("--out", type=Path, default=FIXTURE, help=f"JSON to write (default {FIXTURE})")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter for the original's benchmark (needs pandas)")
    p.add_argument("--skip_benchmark", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    repo = args.original_repo.resolve()
    trainer_mod, apl, scorer_mod = import_original(repo)
    import PIL
    import skimage
    import transformers

    t0 = time.time()
    out: dict = {
        "about": "Values computed by the original promptable-differentiable-rewards code on "
                 "inputs rebuilt from scikit-image's bundled photos (benchmarks/"
                 "original_reference.py:build_image). Read by tests/test_original_reference.py.",
        "command": "python benchmarks/original_reference.py --original_repo DIR",
        "original": original_identity(repo),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "numpy": np.__version__,
                        "pillow": PIL.__version__, "scikit-image": skimage.__version__,
                        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU"},
        "images": {n: {**spec, "sha256": image_sha256(build_image(spec)),
                       "shape": list(build_image(spec).shape)} for n, spec in IMAGES.items()},
        "settings": {s["name"]: s for s in (README_SETTINGS, DEFAULT_SETTINGS)},
    }
    out["anchors_and_grid"] = anchors_and_grid(trainer_mod, apl)
    out["original_photos"] = original_photos(repo, trainer_mod, apl)
    print(f"anchors and grid: {time.time() - t0:.0f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out["tiny_internvl"] = save_tiny_internvl(tmp / "tiny_internvl")
        out["answer_token_ids"] = answer_token_ids(scorer_mod, tmp / "tiny_internvl")
        out["scorer_function"] = scorer_function(scorer_mod, tmp / "tiny_internvl")
        print(f"scorer: {time.time() - t0:.0f} s", file=sys.stderr)
        out["scorer_cli"] = scorer_cli(scorer_mod, tmp / "tiny_internvl", tmp / "cli")
        print(f"scorer cli: {time.time() - t0:.0f} s", file=sys.stderr)
        if not args.skip_benchmark:
            out["benchmark"] = benchmark(repo, tmp, args.python)
            print(f"benchmark: {time.time() - t0:.0f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
