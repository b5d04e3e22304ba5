"""`make demo-vlm`: the rating question alone steers a LoRA edit.

    python -m alignprop.demo_vlm --output_dir outputs/demo_vlm [--media_dir media]

Two LoRAs are trained on ``tiny-photo`` (the tiny FLUX Kontext pretrained on bundled
photos) with the same seed, photos, steps and reward terms; they differ ONLY in the
question asked of ``tiny-vlm-photo`` (the tiny InternVL pretrained to answer questions
about photos, ``python -m alignprop.pretrain_tiny_vlm``; ``--vlm tiny-qwen-vl-photo`` asks
the tiny Qwen2.5-VL pretrained the same way instead):

* :data:`QUESTION_A` -- "How warm are the colours? Answer 0 to 9.";
* :data:`QUESTION_B` -- "How bright is the photo? Answer 0 to 9.".

Reward of both runs (the trainer's own reward path and flags):

* ``aesthetic`` -- the VLM's answer to the question (task ``single``, expected digit / 9,
  calibration ``pmi_null``), weight :data:`VLM_WEIGHT`;
* the content term -- the trainer's base consistency (``--base_consistency_weight``
  :data:`CONSISTENCY_WEIGHT`, metric ``latent``): mean squared distance of the LoRA's final
  latents from the base model's for the same input, noise and prompt. (The VLM's own
  content-similarity answer is not used: its held-out AUC is not good enough yet, see
  ``rewards/assets/tiny-vlm-photo/manifest.json``.)
* guards, as in ``make demo``: the FFT anti-grid penalty at the tiny model's 4-px token grid
  on the outputs upsampled 2x (weight :data:`GRID_WEIGHT`), and the fine texture added over
  the input per 4-px cell (``rewards.grid.texture_added``, weight :data:`TEXTURE_WEIGHT`).

Then four photos neither model ever saw (astronaut, chelsea, coffee, rocket) are edited
with diffusers' ``FluxKontextPipeline`` without and with each LoRA (same seed), and the
demo prints PASS/FAIL for each promise (:func:`demo_checks`):

* each run moves its own statistic toward its question by at least a stated amount
  (warmth: mean R - B up by :data:`MIN_OWN_MOVE` ``["warmth"]``; brightness: mean luma up by
  :data:`MIN_OWN_MOVE` ``["brightness"]``);
* each run moves the other question's statistic much less: at most :data:`MAX_CROSS_RATIO`
  of what the run asked for that statistic moved it;
* content is kept: SSIM (luma) of each LoRA's output against the base output >=
  :data:`SSIM_FLOOR`;
* no grid is added: each LoRA's grid penalty is at most :data:`GRID_TOLERANCE` above that
  of the base output given the LoRA's own global tone and colour edit
  (``rewards.grid.matched_global_edit``, as ``make demo`` checks since issue 21: a clean
  warmer or brighter edit changes the penalty by itself, so the base output alone is not
  the reference). The rise over the base output is reported too, and (``grid_coherent``,
  not a check) the same grid term read with the more sensitive coherent statistic
  (``--grid_ratio_statistic coherent``; docs/anti_grid.md).

Writes ``<question>/pytorch_lora_weights.safetensors``, ``grid.png`` (held-out photos;
columns input | base | question A | question B) and ``demo_vlm_summary.json``; with
``--media_dir`` also ``demo_vlm_grid.png`` and ``demo_vlm_summary.json`` there. The
README's figures are :func:`readme_line` of the committed summary (tests/test_demo_vlm.py).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common.cli import run_cli
from common.images import save_image
from common.photos import write_photos
from rewards.grid import matched_global_edit, texture_added
from rewards.vlm import make_vlm_reward
from rewards.vlm_named import named_vlms
from rewards.vlm_shift import views_arg

from . import tiny_vlm_data as data
from .config import TrainConfig
from .data import ImageFolder
from .demo import (BACKPROP_STEPS, GRID_PERIOD, HELD_OUT, MAX_SEQUENCE_LENGTH, SAMPLE_STEPS,
                   SIZE, TEXTURE_FLOOR, TEXTURE_GAIN, UPSAMPLE, build_grid_figure,
                   claim_demo_dir, coherent_grid_flags, demo_parser, edit_with_pipeline,
                   ssim_luma)
from .logging_utils import image_grid
from .models import TINY_PHOTO, load_kontext_pipeline
from .reward_flags import RewardFlags, build_reward_from_flags
from .tiny_photo import psnr
from .trainer import train

VLM = "tiny-vlm-photo"
# The six photos `make demo` trained on before issue 21 added a seventh (its README figures
# come from these).
PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "camera", "coins",
          "colorwheel")
QUESTION_A = data.QUESTIONS["warmth"]
QUESTION_B = data.QUESTIONS["brightness"]
RUNS = {"warmth": QUESTION_A, "brightness": QUESTION_B}
DEMO_STEPS = 60
LEARNING_RATE = 3e-3
# The VLM term x20 and the grid guard x4 (were x10 and x2): at x10/x2 seeds 1 and 2 failed --
# the brightness answer of tiny-vlm-photo is also raised by grid-like texture, and the guard
# at x2 let the brightness run raise the grid penalty; the guard at x4 alone stopped that but
# halved the luma the brightness run gained (seed 1: +0.024 < 0.05). Both doubled, the checks
# against the base output passed seeds 0, 1, 3, 4; against each run's matched clean edit (the
# check now) seeds 2 and 4 add a grid (README's seeds table:
# benchmarks/bench_demo_seeds.py --demo vlm).
VLM_WEIGHT = 20.0
CALIBRATION = "pmi_null"
# Shift views of the VLM term (--internvl_shift_views; --shift_views overrides): 1 = the image
# as given. 4 and 16 views made the runs push further and add a grid more often (seeds 0-9:
# 4 / 10 pass every check, 7 / 10 at one view; docs/vlm.md), so the demo keeps one.
SHIFT_VIEWS = 1
# The content term: mean squared distance of the LoRA's final latents from the base model's
# (same input, noise and prompt; the trainer's --base_consistency_weight, metric latent).
CONSISTENCY_WEIGHT = 3.0
GRID_WEIGHT = 4.0
# Fine texture added over the input per 4-px token (grain the comb cannot see), as `make demo`.
TEXTURE_WEIGHT = 1e5
# Checks.
MIN_OWN_MOVE = {"warmth": 0.05, "brightness": 0.05}
MAX_CROSS_RATIO = 0.5
SSIM_FLOOR = 0.70
GRID_TOLERANCE = 0.02


def vlm_flags(question: str, shift_views: int = SHIFT_VIEWS, vlm: str = VLM) -> RewardFlags:
    """The reward flags of one run: only ``aesthetic_prompt`` differs between the two. (The
    VLM term takes any supported family under ``internvl_model_id``: the family is read from
    the checkpoint's config.)"""
    return RewardFlags(aesthetic_model_type="internvl", aesthetic_prompt=question,
                       aesthetic_reward_scale=VLM_WEIGHT, internvl_model_id=vlm,
                       internvl_dtype="float32", internvl_calibration=CALIBRATION,
                       internvl_shift_views=shift_views, crispness_weight=0.0)


def guard_flags() -> RewardFlags:
    return RewardFlags(grid_ratio_weight=GRID_WEIGHT, grid_ratio_period=GRID_PERIOD,
                       grid_eval_resize=0, crispness_weight=0.0)


def demo_reward(question: str, shift_views: int = SHIFT_VIEWS, vlm: str = VLM):
    """The VLM's answer to ``question`` at native size (mean over ``shift_views`` shifted views)
    + the grid guard on the 2x-upsampled output (the tiny VAE's 2-px stride is at native
    Nyquist, as in ``make demo``)."""
    answer = build_reward_from_flags(vlm_flags(question, shift_views, vlm))
    guard = build_reward_from_flags(guard_flags())

    def fn(images, inputs, prompts):
        def up(x):
            return F.interpolate(x, scale_factor=UPSAMPLE, mode="nearest")

        s1, m1 = answer(images, inputs, prompts)
        s2, m2 = guard(up(images), up(inputs), prompts)
        texture = texture_added(images, inputs, GRID_PERIOD, TEXTURE_GAIN, TEXTURE_FLOOR)
        scores = s1 + s2 - TEXTURE_WEIGHT * texture
        return scores, {**m1, **m2, "texture/added": float(texture.detach().mean()),
                        "reward": float(scores.detach().mean())}

    fn.terms = list(answer.terms) + list(guard.terms)
    return fn


def train_config(question_name: str, photos: Path, out: Path, steps: int, seed: int
                 ) -> TrainConfig:
    """Training flags of one run (the same for both questions but the output folder)."""
    return TrainConfig(
        pretrained_model=TINY_PHOTO, data_dir=str(photos), output_dir=str(out / question_name),
        image_height=SIZE, image_width=SIZE, sample_num_steps=SAMPLE_STEPS,
        backprop_steps=BACKPROP_STEPS, max_sequence_length=MAX_SEQUENCE_LENGTH,
        train_batch_size=2, max_train_steps=steps, train_learning_rate=LEARNING_RATE,
        lora_rank=8, save_freq=0, log_image_freq=0, log_with="none", seed=seed,
        mixed_precision="no", base_consistency_weight=CONSISTENCY_WEIGHT,
        base_consistency_metric="latent")


# --------------------------------------------------------------------------- checks
def demo_checks(s: dict) -> dict[str, bool]:
    """What the demo promises (each printed as PASS/FAIL)."""
    out = {}
    moves = s["moves"]
    for own, other in (("warmth", "brightness"), ("brightness", "warmth")):
        out[f"{own}_question_moves_{own}_by_{MIN_OWN_MOVE[own]}"] = \
            moves[own][own] >= MIN_OWN_MOVE[own]
        out[f"{own}_question_moves_{other}_much_less"] = \
            abs(moves[own][other]) <= MAX_CROSS_RATIO * moves[other][other]
        out[f"{own}_question_keeps_content_ssim"] = s["ssim_vs_base"][own] >= SSIM_FLOOR
        out[f"{own}_question_adds_no_grid_beyond_its_edit"] = \
            s["grid_penalty"][own] <= s["grid_penalty_matched_edit"][own] + GRID_TOLERANCE
    return out


def readme_line(s: dict) -> str:
    """The demo's figures as the README states them (tests/test_demo_vlm.py compares)."""
    m, st = s["moves"], s["statistics"]
    return (f"warmth question: R-B {st['base']['warmth']:+.3f} -> {st['warmth']['warmth']:+.3f} "
            f"(luma {m['warmth']['brightness']:+.3f}), SSIM vs base "
            f"{s['ssim_vs_base']['warmth']:.3f}; brightness question: luma "
            f"{st['base']['brightness']:.3f} -> {st['brightness']['brightness']:.3f} "
            f"(R-B {m['brightness']['warmth']:+.3f}), SSIM vs base "
            f"{s['ssim_vs_base']['brightness']:.3f}; coherent grid statistic (reported, not "
            f"checked) base {s['grid_coherent']['base']:.3f}, warmth "
            f"{s['grid_coherent']['warmth']:.3f} (matched edit "
            f"{s['grid_coherent_matched_edit']['warmth']:.3f}), brightness "
            f"{s['grid_coherent']['brightness']:.3f} (matched edit "
            f"{s['grid_coherent_matched_edit']['brightness']:.3f}); "
            f"{s['train_seconds_total']:.0f} s of training")


def _stats(images: torch.Tensor) -> dict[str, float]:
    return {a: float(data.statistic(a, images).mean()) for a in ("warmth", "brightness")}


def main(argv=None) -> int:
    parser = demo_parser("python -m alignprop.demo_vlm", __doc__.splitlines()[0],
                         "outputs/demo_vlm", DEMO_STEPS, runs=len(RUNS))
    parser.add_argument("--shift_views", type=views_arg, default=SHIFT_VIEWS,
                        help="The VLM term's shift views (the trainer's --internvl_shift_views): "
                             "1 = the image as given, k*k = the mean over k x k sub-patch "
                             f"shifts (default {SHIFT_VIEWS}; docs/vlm.md).")
    parser.add_argument("--vlm", choices=named_vlms(), default=VLM,
                        help=f"The pretrained tiny VLM asked the questions (default {VLM}, "
                             "InternVL3; tiny-qwen-vl-photo: Qwen2.5-VL). The demo's weights "
                             "and checks were chosen on the default.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()

    out = Path(args.output_dir)
    claim_demo_dir(out)
    for name in RUNS:
        shutil.rmtree(out / name, ignore_errors=True)
    photos, held = out / "photos", out / "held_out"
    write_photos(photos, PHOTOS)
    write_photos(held, HELD_OUT)
    train_s = {}
    for name, question in RUNS.items():
        cfg = train_config(name, photos, out, args.steps, args.seed)
        t0 = time.time()
        train(cfg, vlm_flags(question, args.shift_views, args.vlm),
              reward_fn=demo_reward(question, args.shift_views, args.vlm))
        train_s[name] = round(time.time() - t0, 1)

    folder = ImageFolder(held, SIZE, SIZE, TrainConfig.prompt)
    inputs = torch.stack([folder.load(i) for i in range(len(folder))])
    pipe = load_kontext_pipeline(TINY_PHOTO)
    prompt = TrainConfig.prompt
    outputs = {"base": edit_with_pipeline(pipe, inputs, prompt)}
    for name in RUNS:
        pipe.load_lora_weights(str(out / name))
        outputs[name] = edit_with_pipeline(pipe, inputs, prompt)
        pipe.unload_lora_weights()
    guard, coherent = build_guard(), build_guard(coherent_grid_flags())
    stats = {k: _stats(v) for k, v in outputs.items()}
    answers = vlm_answers(outputs, inputs, args.vlm)
    summary = {
        "model": TINY_PHOTO, "vlm": args.vlm, "questions": RUNS, "steps": args.steps,
        "seed": args.seed, "size": SIZE, "held_out": list(HELD_OUT),
        "train_seconds": train_s, "train_seconds_total": round(sum(train_s.values()), 1),
        "statistics": {"input": _stats(inputs), **stats},
        "moves": {name: {a: stats[name][a] - stats["base"][a] for a in ("warmth", "brightness")}
                  for name in RUNS},
        "ssim_vs_base": {name: ssim_luma(outputs[name], outputs["base"]) for name in RUNS},
        "psnr_vs_base_db": {name: float(psnr(outputs[name], outputs["base"]).mean())
                            for name in RUNS},
        "grid_penalty": {k: guard(v) for k, v in outputs.items()},
        # the base output given each LoRA's own global edit: the reference of the grid check
        "grid_penalty_matched_edit": {
            name: guard(matched_global_edit(outputs["base"], outputs[name])) for name in RUNS},
        # reported, not checked: the more sensitive coherent statistic (docs/anti_grid.md)
        "grid_coherent": {k: coherent(v) for k, v in outputs.items()},
        "grid_coherent_matched_edit": {
            name: coherent(matched_global_edit(outputs["base"], outputs[name])) for name in RUNS},
        "vlm_answers": answers,
        "reward": {"vlm_weight": VLM_WEIGHT, "calibration": CALIBRATION,
                   "base_consistency_weight": CONSISTENCY_WEIGHT, "grid_weight": GRID_WEIGHT,
                   "texture_weight": TEXTURE_WEIGHT, "learning_rate": LEARNING_RATE,
                   "shift_views": args.shift_views},
        "thresholds": {"min_own_move": MIN_OWN_MOVE, "max_cross_ratio": MAX_CROSS_RATIO,
                       "ssim_floor": SSIM_FLOOR, "grid_tolerance": GRID_TOLERANCE},
    }
    summary["checks"] = demo_checks(summary)
    summary["total_seconds"] = round(time.time() - t_start, 1)
    grid = image_grid([inputs, outputs["base"], outputs["warmth"], outputs["brightness"]])
    save_image(F.interpolate(grid[None], scale_factor=4, mode="nearest")[0], out / "grid.png")
    (out / "demo_vlm_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.media_dir:
        media = Path(args.media_dir)
        media.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "grid.png", media / "demo_vlm_grid.png")
        shutil.copyfile(out / "demo_vlm_summary.json", media / "demo_vlm_summary.json")
    print(json.dumps(summary, indent=2))
    print("README figures: " + readme_line(summary))
    for name, ok in summary["checks"].items():
        print(f"check {name}: {'PASS' if ok else 'FAIL'}")
    for name in RUNS:
        print(f"reported {name} question: coherent grid statistic (not a check): base "
              f"{summary['grid_coherent']['base']:.3f} -> LoRA "
              f"{summary['grid_coherent'][name]:.3f}, matched edit "
              f"{summary['grid_coherent_matched_edit'][name]:.3f}")
    print(f"wrote {out / 'grid.png'} (held-out photos; columns: input | base | "
          f"{QUESTION_A!r} | {QUESTION_B!r})")
    return 0 if all(summary["checks"].values()) else 1


@torch.no_grad()
def vlm_answers(outputs: dict[str, torch.Tensor], inputs: torch.Tensor, vlm: str = VLM) -> dict:
    """What the demo's VLM answers (0..9, mean over the photos) about each column."""
    def ask(task, prompt):
        return make_vlm_reward(task, model_id=vlm, dtype="float32", device="cpu", prompt=prompt,
                               calibration=CALIBRATION)

    questions = {name: ask("single", q) for name, q in RUNS.items()}
    return {col: {name: round(9 * float(r(images, inputs)[0].mean()), 2)
                  for name, r in questions.items()} for col, images in outputs.items()}


def build_guard(flags: RewardFlags = None):
    """Grid penalty (what the guard measures; or that of ``flags``' grid term) of a batch,
    mean over images."""
    reward = build_grid_figure(guard_flags() if flags is None else flags)

    def penalty(images: torch.Tensor) -> float:
        return float(reward(images).mean())

    return penalty


def cli(argv=None) -> int:
    return run_cli(main, argv, "alignprop.demo_vlm")


if __name__ == "__main__":
    sys.exit(cli())
