"""`make demo`: AlignProp teaches the pretrained tiny FLUX Kontext a look it does not have.

    python -m alignprop.demo --output_dir outputs/demo [--media_dir media]

The base model is ``tiny-photo`` (the built-in tiny Kontext pretrained on bundled
photos by ``python -m alignprop.pretrain_tiny``): for the project's default prompt
it gives the photo back (``base_psnr_vs_input_db`` in the summary). A LoRA is then
trained at 64x64 on six bundled photos, with gradients through the last sampling
steps, toward a *brighter, more colourful* look while keeping the content:

* ``brightness``  -- mean luma toward :data:`BRIGHTNESS_TARGET` (the project's anchor);
* ``colourfulness`` -- every pixel's opponent colours (rg, yb) :data:`SATURATION_GAIN` times
  the input's (``saturation_error``: away from grey, so neutral parts stay neutral), with no
  colour cast beyond that (``cast``); the summary reports the spread of the opponent colours
  (``colourfulness``) and the chroma of parts that are grey in the input (``neutral_tint``);
* ``structure``   -- the output's standardised luma and colour maps must stay the input's
  (content kept; brightness, contrast and saturation are free to change);
* guards: the FFT anti-grid penalty (luma and colour), the crispness floor, a penalty on
  periodic texture at the tiny model's 2/4/8-px lattice, and the trainer's base consistency
  with metric ``detail`` (:data:`DETAIL_WEIGHT`): the fine detail of what the LoRA's image
  changes in the base model's image (same input, noise and prompt) *beyond* a global tone and
  colour edit (``rewards.grid.detail_beyond_edit``) -- the brighter, more colourful look is
  free, blocky texture and grids are not (docs/anti_grid.md).

Then two held-out sets the LoRA never saw (neither was in tiny-photo's pretraining either,
:mod:`alignprop.photo_sets`) -- scikit-image's astronaut, chelsea, coffee and rocket, and 12
bundled photos of another source -- are edited with diffusers' own ``FluxKontextPipeline``
before and after ``pipe.load_lora_weights(output_dir)`` under the same :data:`EVAL_DRAWS`
noise draws, and the demo checks each set on the means over photos and draws, printing
PASS/FAIL for each (:func:`demo_checks`):

* the held-out reward improves; brightness moves toward its target and colourfulness up;
* content is kept: SSIM (luma) of the LoRA output against the base output >= :data:`SSIM_FLOOR`;
* the anti-grid penalty and the fine texture are not above those of the base output given
  the LoRA's own global tone and colour edit (``rewards.grid.matched_global_edit``: a clean
  edit of the same strength, so the look itself is not counted as texture); no periodic
  texture appears and grey parts stay grey.

Beside the grid check the demo reports (``grid_coherent_*``, not a check) the same grid term
read with the more sensitive coherent statistic (``--grid_ratio_statistic coherent``) for the
base output, the LoRA's and the matched edit: it sees the 4-px token pattern the LoRA adds,
which the check's default statistic does not (docs/anti_grid.md).

The exit status is 0 when every check of the first set passes (with ``--strict``: of both
sets); ``benchmarks/bench_demo_seeds.py`` runs it with ``--strict`` for seeds 0-4.

Writes ``pytorch_lora_weights.safetensors``, ``reward_curve.png``, ``grid.png`` and
``grid_second_set.png`` (input | before | after) and ``demo_summary.json``; the README's demo
figures are the line :func:`readme_line` prints (tests/test_demo_readme.py compares them
with the committed ``media/demo_summary.json``). Nothing under the photo folders is
overwritten if it exists.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from common.cli import UserError, int_at_least, nonneg_int
from common.images import save_image
from common.paths import check_writable_dir
from common.photos import HELD_OUT_NAMES, write_photos
from rewards.base import metrics_to_floats
from rewards.grid import REC709, luminance, matched_global_edit, texture_added

from .config import TrainConfig
from .data import ImageFolder
from .logging_utils import image_grid, plot_reward_curve, read_metrics
from .models import TINY_PHOTO, load_kontext_pipeline
from .photo_sets import SECOND_SET_DIR, second_set_paths
from .reward_flags import RewardFlags, build_reward_from_flags
from .tiny_photo import psnr
from .trainer import train

# LoRA training photos (all seen in pretraining) and held-out photos (never seen).
# stereo_motorcycle (saturated reds, in tiny-photo's pretraining as motorcycle_left.png) was
# added for issue 21: without a saturated photo to train on, the guards never saw what the
# LoRA does to saturated colours, and the held-out figs' grid penalty rose (docs/anti_grid.md).
PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "camera", "coins",
          "colorwheel", "stereo_motorcycle")
HELD_OUT = HELD_OUT_NAMES
SIZE = 64
DEMO_STEPS = 80
LEARNING_RATE = 2e-3
SAMPLE_STEPS = 4
# Noise draws per held-out photo in the checks (pipeline seeds 1..EVAL_DRAWS; the base, the
# LoRA and the matched edit all under the same draws, every figure a mean over them). With
# one draw the second set's grid excess (LoRA - matched edit) moved by 0.007-0.016 (std
# over 6 draws, per seed) around its mean, as much as the check's 0.02 tolerance: one
# draw's verdict was partly noise. Four draws cut that std by 2 (docs/anti_grid.md).
EVAL_DRAWS = 4
BACKPROP_STEPS = 2
# tiny-photo reads its prompt through CLIP's pooled embedding; its T5 tokens are identical
# by construction, so a short T5 sequence gives the same images far cheaper (see tiny_photo).
MAX_SEQUENCE_LENGTH = 64
BRIGHTNESS_TARGET = 0.60
BRIGHTNESS_WEIGHT = 150.0
# Saturation is scaled away from grey (see saturation_error), by this gain or less where it
# would leave the RGB cube (gamut_gain). Limited to the cube, 1.45 no longer moved the
# held-out colourfulness past its check (+0.02); 2.0 does (+0.03-0.04).
SATURATION_GAIN = 2.0
COLOURFULNESS_WEIGHT = 1000.0
CAST_WEIGHT = 300.0
STRUCTURE_WEIGHT = 20.0
GRID_WEIGHT = 2.0
LATTICE_WEIGHT = 300.0
# The texture guard: the trainer's base consistency, metric "detail" (fine detail the LoRA
# changes beyond a global edit of the base model's image, rewards.grid.detail_beyond_edit).
# It replaced a term on texture added over the *input* (weight 1e5), which saw the base
# model's own texture and any contrast gain as texture (docs/anti_grid.md).
DETAIL_WEIGHT = 1e5
# The texture measure of the checks (rewards.grid.texture_added, per 4-px token).
TEXTURE_GAIN = 1.5
TEXTURE_FLOOR = 2e-5
# Checks.
SSIM_FLOOR = 0.70
MIN_BRIGHTNESS_MOVE = 0.03
MIN_COLOURFULNESS_GAIN = 0.03
GRID_TOLERANCE = 0.02
# Chroma (opponent-colour length, [0,1] units) the LoRA may add where the input is grey:
# about what the base model already adds there (0.012 -> 0.041 on the held-out photos).
# The saturation target of the first demo (around the image's mean colour) added 0.087.
NEUTRAL_TOLERANCE = 0.03
# Texture the LoRA may add over the base output given the LoRA's own global edit (same
# measure as the reward term): 10 % of the base model's own texture. (Against the base
# output as it is, as first checked, a clean brightness x1.1 already failed: see
# benchmarks/demo_check_sensitivity.py.)
TEXTURE_SLACK = 0.10
# The tiny model's token grid: VAE stride 2 x 2x2 token packing = 4 px (FLUX: 8 x 2 = 16).
GRID_PERIOD = 4
# The tiny VAE's own stride is 2 px, the Nyquist frequency at native size, where no FFT
# comb can measure a period: the grid term sees the outputs upsampled 2x (nearest).
UPSAMPLE = 2
# Patterns repeating every 2, 4 or 8 px put all their power on multiples of 1/8 px^-1.
LATTICE_PERIOD = 8




# --------------------------------------------------------------------------- reward terms
def _opponent(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r, g, b = images.float().unbind(1)
    return (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """[B] spread of the opponent colours (the std part of Hasler & Suesstrunk's measure).

    Its mean part is left out on purpose: a uniform colour cast raises it, and a LoRA
    trained on it tinted every photo blue. Differentiable.
    """
    rg, yb = _opponent(images)
    return (rg.var(1, unbiased=False) + yb.var(1, unbiased=False) + 1e-8).sqrt()


def gamut_gain(inputs: torch.Tensor, gain: float) -> torch.Tensor:
    """(B, H*W) per-pixel saturation gain: ``gain``, or less where ``gain`` would take the
    pixel's colour out of the RGB cube (a channel below 0 or above 1 around its grey).

    A target out of the cube cannot be met: the decoder's output is clamped there, so no
    term (nor any guard) has a gradient on those pixels, and what the LoRA puts below the
    clamp comes back as blocks once it pokes above 0 (docs/anti_grid.md).
    """
    x = inputs.float().flatten(2)                                    # (B,3,N)
    grey = (x * x.new_tensor(REC709)[:, None]).sum(1, keepdim=True)  # (B,1,N)
    d = x - grey
    room = torch.where(d > 0, (1 - grey) / d.clamp_min(1e-6),
                       torch.where(d < 0, grey / (-d).clamp_min(1e-6), torch.full_like(d, gain)))
    return room.amin(1).clamp(1.0, gain)


def saturation_error(images: torch.Tensor, inputs: torch.Tensor,
                     gain: float = None) -> torch.Tensor:
    """[B] per-pixel distance of the output's opponent colours from ``gain`` x the input's.

    Saturation scales each pixel's colour away from grey (opponent colours 0), so grey and
    black stay neutral and every colour keeps its hue. (Scaling around the image's mean
    colour instead, as this demo first did, pushed neutral pixels toward the complement of
    the mean: the astronaut's black helmet turned teal.) A per-pixel target also leaves no
    room for a colourful stripe or texture elsewhere: a colourfulness hinge (one number per
    image) was met by painting a red bar along the bottom rows.
    """
    gain = gamut_gain(inputs, SATURATION_GAIN if gain is None else gain)
    err = 0
    for c, c0 in zip(_opponent(images), _opponent(inputs)):
        err = err + ((c - gain * c0) ** 2).mean(1)
    return err


def colour_cast(images: torch.Tensor, inputs: torch.Tensor, gain: float = None) -> torch.Tensor:
    """[B] squared shift of the mean opponent colours from the saturated input's (a tint).

    With ``gain`` 1 this is the shift from the input's own mean colour.
    """
    gain = gamut_gain(inputs, SATURATION_GAIN if gain is None else gain)
    (rg, yb), (rg0, yb0) = _opponent(images), _opponent(inputs)
    return (rg.mean(1) - (gain * rg0).mean(1)) ** 2 + (yb.mean(1) - (gain * yb0).mean(1)) ** 2


def neutral_tint(images: torch.Tensor, inputs: torch.Tensor, threshold: float = 0.03) -> float:
    """Mean chroma (opponent-colour length) of the output where the input is near grey.

    Grey, black and white parts of a photo should stay neutral under a saturation edit; a
    value well above the base model's means the edit tinted them.
    """
    (rg, yb), (rg0, yb0) = _opponent(images), _opponent(inputs)
    mask = (rg0 ** 2 + yb0 ** 2).sqrt() < threshold
    if not bool(mask.any()):
        return 0.0
    return float((rg ** 2 + yb ** 2).sqrt()[mask].mean())


def _standardise(x: torch.Tensor, eps: float) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + eps)


def structure_error(images: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """[B] content change: MSE of standardised luma and opponent-colour maps.

    Standardising each map removes brightness, contrast and saturation (what the edit may
    change) and keeps where things are and which colour they are (what it must keep).
    """

    y, y0 = luminance(images.float()).flatten(1), luminance(inputs.float()).flatten(1)
    err = ((_standardise(y, 1e-3) - _standardise(y0, 1e-3)) ** 2).mean(1)
    # Colour maps count less and have a larger epsilon: grey photos have (almost) none.
    for c, c0 in zip(_opponent(images), _opponent(inputs)):
        err = err + 0.25 * ((_standardise(c, 0.05) - _standardise(c0, 0.05)) ** 2).mean(1)
    return err


def lattice_share(images: torch.Tensor, period: int = LATTICE_PERIOD) -> torch.Tensor:
    """[B] share of the luma AC power on the frequencies of patterns repeating every ``period`` px."""

    lum = luminance(images.float())
    lum = lum - lum.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(lum).abs() ** 2
    h, w = lum.shape[-2:]
    lattice = torch.zeros(h, w, dtype=torch.bool)
    lattice[::max(1, h // period), ::max(1, w // period)] = True
    lattice[0, 0] = False  # DC
    return power[:, lattice].sum(-1) / power.sum(dim=(-2, -1)).clamp_min(1e-12)


def demo_reward_flags():
    return RewardFlags(brightness_anchor_weight=BRIGHTNESS_WEIGHT,
                       brightness_target=BRIGHTNESS_TARGET, brightness_band=0.02,
                       grid_ratio_weight=GRID_WEIGHT, grid_ratio_period=GRID_PERIOD,
                       grid_eval_resize=0, crispness_weight=0.1, crispness_eval_resize=0)


def coherent_grid_flags() -> RewardFlags:
    """The demo's grid term (same period and size) read with the coherent statistic
    (``--grid_ratio_statistic coherent``): reported beside the grid check, not a check."""
    return RewardFlags(grid_ratio_weight=1.0, grid_ratio_period=GRID_PERIOD, grid_eval_resize=0,
                       grid_ratio_statistic="coherent", crispness_weight=0.0)


def build_grid_figure(flags: RewardFlags):
    """``images -> [B]`` grid penalty of ``flags``' grid term on the 2x-upsampled images
    (the tiny VAE's 2-px stride is at native Nyquist; the demo's guard sees the same)."""
    import torch.nn.functional as F

    reward = build_reward_from_flags(flags)

    @torch.no_grad()
    def penalty(images: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(images, scale_factor=UPSAMPLE, mode="nearest")
        return -reward(up, up, None)[0] / flags.grid_ratio_weight

    return penalty


def demo_reward(base_reward):
    """The project's terms (brightness, grid at 2x, crispness) + the demo's look and guards."""
    import torch.nn.functional as F

    def fn(images, inputs, prompts):
        def up(x):
            return F.interpolate(x, scale_factor=UPSAMPLE, mode="nearest")

        scores, metrics = base_reward(up(images), up(inputs), prompts)
        colour = colourfulness(images)
        colour_pen = saturation_error(images, inputs)
        cast = colour_cast(images, inputs)
        structure = structure_error(images, inputs)
        lattice = lattice_share(images)
        texture = texture_added(images, inputs, GRID_PERIOD, TEXTURE_GAIN, TEXTURE_FLOOR)
        scores = (scores - COLOURFULNESS_WEIGHT * colour_pen - CAST_WEIGHT * cast
                  - STRUCTURE_WEIGHT * structure - LATTICE_WEIGHT * lattice)
        metrics = dict(metrics)
        metrics.update({
            "colourfulness/value": float(colour.detach().mean()),
            "saturation/error": float(colour_pen.detach().mean()),
            "colourfulness/weighted": -COLOURFULNESS_WEIGHT * float(colour_pen.detach().mean()),
            "cast/value": float(cast.detach().mean()),
            "cast/weighted": -CAST_WEIGHT * float(cast.detach().mean()),
            "structure/error": float(structure.detach().mean()),
            "structure/weighted": -STRUCTURE_WEIGHT * float(structure.detach().mean()),
            "lattice/share": float(lattice.detach().mean()),
            "lattice/weighted": -LATTICE_WEIGHT * float(lattice.detach().mean()),
            "texture/added": float(texture.detach().mean()),  # logged, not a term
            "reward": float(scores.detach().mean())})
        return scores, metrics

    fn.terms = base_reward.terms  # run_config.json lists the terms
    return fn


# --------------------------------------------------------------------------- checks
def ssim_luma(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of the luma of two batches in [0,1] (scikit-image)."""
    import numpy as np
    from skimage.metrics import structural_similarity


    ya = luminance(a.float())[:, 0].numpy().astype(np.float64)
    yb = luminance(b.float())[:, 0].numpy().astype(np.float64)
    return float(np.mean([structural_similarity(x, y, data_range=1.0) for x, y in zip(ya, yb)]))


def demo_checks(s: dict) -> dict[str, bool]:
    """What the demo promises (each printed as PASS/FAIL)."""
    target = s["brightness_target"]
    moved = abs(s["mean_luma_before"] - target) - abs(s["mean_luma_after"] - target)
    return {
        "held_out_reward_improved": s["held_out_reward_after"] > s["held_out_reward_before"],
        "brightness_moved_toward_target": moved >= MIN_BRIGHTNESS_MOVE,
        "colourfulness_increased": (s["colourfulness_after"] - s["colourfulness_before"]
                                    >= MIN_COLOURFULNESS_GAIN),
        "content_kept_ssim_vs_base": s["ssim_after_vs_base"] >= SSIM_FLOOR,
        # grid and texture: against the base output given the LoRA's own global edit
        # (matched_global_edit), so what is measured is what the LoRA adds beyond a clean
        # edit of the same strength (benchmarks/demo_check_sensitivity.py)
        "grid_penalty_not_above_matched_edit": (s["grid_penalty_after"]
                                                <= s["grid_penalty_matched_edit"]
                                                + GRID_TOLERANCE),
        "no_new_periodic_texture": s["lattice_share_after"] <= 1.25 * s["lattice_share_before"],
        "neutral_parts_stay_neutral": (s["neutral_tint_after"]
                                       <= s["neutral_tint_before"] + NEUTRAL_TOLERANCE),
        "no_texture_added_over_matched_edit": (s["texture_after"] <= s["texture_matched_edit"]
                                               + TEXTURE_SLACK * s["texture_before"]),
    }


def readme_line(s: dict) -> str:
    """The demo's figures as the README states them (the test compares the two)."""
    return (f"base PSNR vs input {s['base_psnr_vs_input_db']:.1f} dB; held-out reward "
            f"{s['held_out_reward_before']:.2f} -> {s['held_out_reward_after']:.2f}; mean luma "
            f"{s['mean_luma_before']:.3f} -> {s['mean_luma_after']:.3f} (target "
            f"{s['brightness_target']}); colourfulness {s['colourfulness_before']:.3f} -> "
            f"{s['colourfulness_after']:.3f}; SSIM after vs before {s['ssim_after_vs_base']:.3f} "
            f"(floor {s['ssim_floor']}); grid penalty {s['grid_penalty_before']:.3f} -> "
            f"{s['grid_penalty_after']:.3f}; coherent grid statistic (reported, not checked) "
            f"{s['grid_coherent_before']:.3f} -> {s['grid_coherent_after']:.3f} (matched edit "
            f"{s['grid_coherent_matched_edit']:.3f})")


@torch.no_grad()
def edit_with_pipeline(pipe, images, prompt, steps=SAMPLE_STEPS, seed=1):
    """The held-out edit every demo reports: diffusers' own pipeline at the demo's size."""
    return pipe(image=images, prompt=[prompt] * len(images), height=SIZE, width=SIZE,
                num_inference_steps=steps, guidance_scale=2.5,
                generator=torch.Generator().manual_seed(seed), output_type="pt",
                max_area=SIZE * SIZE, _auto_resize=False,
                max_sequence_length=MAX_SEQUENCE_LENGTH).images


def edit_draws(pipe, images, prompt, draws=EVAL_DRAWS):
    """``edit_with_pipeline`` under pipeline seeds 1..draws, stacked draw after draw:
    (draws*B,3,H,W), so batch means are means over photos and draws."""
    return torch.cat([edit_with_pipeline(pipe, images, prompt, SAMPLE_STEPS, seed=d)
                      for d in range(1, draws + 1)])


DEMO_MARKER = ".alignprop-demo"


def claim_demo_dir(out: Path) -> None:
    """Use ``out`` for the demo: new, empty, or an earlier demo's folder (whose run is cleared).

    The demo writes fixed names (photos/, grid.png, ...), so a folder it did not make is
    refused rather than written over.
    """
    import shutil


    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / DEMO_MARKER).exists() \
            and not (out / "demo_summary.json").exists():
        raise UserError(f"--output_dir {out} holds files the demo did not write; the demo "
                        f"writes fixed names there, so give it a new or empty folder")
    check_writable_dir("--output_dir", out)
    (out / DEMO_MARKER).write_text("written by python -m alignprop.demo\n")
    # An earlier demo's run: start a fresh one (training refuses a folder holding a run).
    for name in ("checkpoints", "logs", "images"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("metrics.jsonl", "run_summary.json", "run_config.json"):
        (out / name).unlink(missing_ok=True)


def demo_parser(prog: str, description: str, output_dir: str, steps: int, runs: int = 1
                ) -> argparse.ArgumentParser:
    """The flags every demo takes (``make demo``, ``make demo-vlm``); ``runs``: LoRAs it trains."""
    each = " per run" if runs > 1 else ""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--output_dir", default=output_dir,
                        help="Where everything goes: a new or empty folder, or an earlier "
                             f"demo's (its {'runs are' if runs > 1 else 'run is'} replaced); "
                             "other folders are refused.")
    parser.add_argument("--steps", type=int_at_least(2), default=steps,
                        help=f"Optimizer steps{each}.")
    parser.add_argument("--seed", type=nonneg_int, default=0,
                        help="Training seed" + (" (every run)." if runs > 1 else "."))
    parser.add_argument("--threads", type=nonneg_int, default=1,
                        help="torch CPU threads (default 1: the tiny model's ops are too small "
                             "to gain from more, and on a busy machine OpenMP threads waiting "
                             "for each other made steps up to 50x slower; 0 = torch's default).")
    parser.add_argument("--media_dir", default=None,
                        help="Also copy the figures and the summary here (the repository uses "
                             "media/; the README's figures come from that summary).")
    return parser


def main(argv=None) -> int:
    parser = demo_parser("python -m alignprop.demo", __doc__.splitlines()[0], "outputs/demo",
                         DEMO_STEPS)
    parser.add_argument("--strict", action="store_true",
                        help="Exit 1 unless every check passes on both held-out sets "
                             "(benchmarks/bench_demo_seeds.py uses it). Without it the exit "
                             "status follows the scikit-image set's checks; the second set's "
                             "grid check fails for one training seed of five (README).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()


    out = Path(args.output_dir)
    claim_demo_dir(out)
    photos, held = out / "photos", out / "held_out"
    write_photos(photos, PHOTOS)
    write_photos(held, HELD_OUT)
    cfg = TrainConfig(
        pretrained_model=TINY_PHOTO, data_dir=str(photos), output_dir=str(out),
        image_height=SIZE, image_width=SIZE, sample_num_steps=SAMPLE_STEPS,
        backprop_steps=BACKPROP_STEPS, max_sequence_length=MAX_SEQUENCE_LENGTH,
        train_batch_size=2, max_train_steps=args.steps, train_learning_rate=LEARNING_RATE,
        lora_rank=8, save_freq=0, log_image_freq=10, log_with="tensorboard", seed=args.seed,
        mixed_precision="no", base_consistency_weight=DETAIL_WEIGHT,
        base_consistency_metric="detail")
    flags = demo_reward_flags()
    reward = demo_reward(build_reward_from_flags(flags))
    t0 = time.time()
    result = train(cfg, flags, reward_fn=reward)
    train_s = time.time() - t0

    # Before / after on both held-out sets with diffusers' own pipeline and LoRA loader.
    sets = {"skimage": held, "second": SECOND_SET_DIR}
    inputs = {}
    for name, folder in sets.items():
        images = ImageFolder(folder, SIZE, SIZE, cfg.prompt)
        inputs[name] = torch.stack([images.load(i) for i in range(len(images))])
    pipe = load_kontext_pipeline(TINY_PHOTO)
    before = {n: edit_draws(pipe, x, cfg.prompt) for n, x in inputs.items()}
    pipe.load_lora_weights(str(out))
    after = {n: edit_draws(pipe, x, cfg.prompt) for n, x in inputs.items()}
    results = {n: held_out_figures(reward, inputs[n], before[n], after[n]) for n in sets}
    # the figures show the first draw
    before = {n: x[:len(inputs[n])] for n, x in before.items()}
    after = {n: x[:len(inputs[n])] for n, x in after.items()}

    grid = image_grid([inputs["skimage"], before["skimage"], after["skimage"]])
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest")[0],
               out / "grid.png")
    grid = image_grid([inputs["second"], before["second"], after["second"]])
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0],
               out / "grid_second_set.png")
    rows = read_metrics(out / "metrics.jsonl")
    plot_reward_curve(rows, out / "reward_curve.png",
                      keys=("train/reward", "train/brightness/weighted",
                            "train/colourfulness/weighted", "train/structure/weighted"),
                      title="tiny-photo demo: brighter + more colourful, content kept")
    summary = {
        "model": TINY_PHOTO, "steps": result.global_step, "size": SIZE, "seed": args.seed,
        "train_seconds": round(train_s, 1),
        "reward_first_5": sum(r["train/reward"] for r in rows[:5]) / min(5, len(rows)),
        "reward_last_5": sum(r["train/reward"] for r in rows[-5:]) / min(5, len(rows)),
        "held_out": list(HELD_OUT),
        "base_psnr_vs_input_db": float(psnr(before["skimage"], inputs["skimage"]).mean()),
        "lora_psnr_vs_base_db": float(psnr(after["skimage"], before["skimage"]).mean()),
        **results["skimage"],
        "held_out_sets": {
            "skimage": {"photos": list(HELD_OUT), **results["skimage"]},
            "second": {"photos": [p.stem for p in second_set_paths()], **results["second"]},
        },
    }
    summary["checks"] = demo_checks(summary)
    for entry in summary["held_out_sets"].values():
        entry["checks"] = demo_checks(entry)
    summary["total_seconds"] = round(time.time() - t_start, 1)
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.media_dir:
        media = Path(args.media_dir)
        media.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "reward_curve.png", media / "demo_reward_curve.png")
        shutil.copyfile(out / "grid.png", media / "demo_grid.png")
        shutil.copyfile(out / "grid_second_set.png", media / "demo_grid_second_set.png")
        shutil.copyfile(out / "demo_summary.json", media / "demo_summary.json")
    print(json.dumps(summary, indent=2))
    print("README figures: " + readme_line(summary))
    for set_name, entry in summary["held_out_sets"].items():
        for name, ok in entry["checks"].items():
            print(f"check {set_name} {name}: {'PASS' if ok else 'FAIL'}")
        print(f"reported {set_name} coherent grid statistic (not a check): base "
              f"{entry['grid_coherent_before']:.3f} -> LoRA {entry['grid_coherent_after']:.3f}, "
              f"matched edit {entry['grid_coherent_matched_edit']:.3f}")
    print(f"wrote {out / 'pytorch_lora_weights.safetensors'}, {out / 'reward_curve.png'}, "
          f"{out / 'grid.png'} (held-out photos; columns: input | before | after)")
    strict_ok = all(all(e["checks"].values()) for e in summary["held_out_sets"].values())
    if not strict_ok:
        print("not every check passes on both held-out sets (see above)"
              + ("" if args.strict else "; without --strict the exit status follows the "
                 "first set's checks"))
    if args.strict:
        return 0 if strict_ok else 1
    return 0 if all(summary["checks"].values()) else 1


def held_out_figures(reward, inputs, before, after) -> dict:
    """The figures the checks read, for one held-out set (base model vs LoRA).

    ``before`` and ``after`` may hold several noise draws of each photo, stacked draw after
    draw (:func:`edit_draws`); every figure is then a mean over photos and draws, and
    ``grid_excess_per_draw`` lists each draw's LoRA - matched-edit grid penalty.
    """
    draws = len(before) // len(inputs)
    if len(before) != draws * len(inputs) or after.shape != before.shape:
        raise ValueError(f"held_out_figures: {len(inputs)} inputs but {len(before)} base and "
                         f"{len(after)} LoRA outputs (expected a whole number of draws)")
    inputs = inputs.repeat(draws, 1, 1, 1)
    with torch.no_grad():
        # reward metrics stay tensors on the device until read (rewards.base)
        r_before = metrics_to_floats(reward(before, inputs, None)[1])
        r_after = metrics_to_floats(reward(after, inputs, None)[1])

        def texture(x):
            return float(texture_added(x, inputs, GRID_PERIOD, TEXTURE_GAIN,
                                       TEXTURE_FLOOR).mean())

        # the base output with the LoRA's global tone and colour edit: no texture of its own
        matched = matched_global_edit(before, after)
        r_matched = metrics_to_floats(reward(matched, inputs, None)[1])
        # the more sensitive coherent statistic sees the 4-px token pattern the LoRA adds,
        # which the ring statistic of the check does not (docs/anti_grid.md): reported only
        coherent = build_grid_figure(coherent_grid_flags())

        return {
            "held_out_reward_before": r_before["reward"],
            "held_out_reward_after": r_after["reward"],
            "brightness_target": BRIGHTNESS_TARGET,
            "mean_luma_input": _luma(inputs),
            "mean_luma_before": r_before["brightness/mean_luma"],
            "mean_luma_after": r_after["brightness/mean_luma"],
            "saturation_gain": SATURATION_GAIN,
            "colourfulness_before": r_before["colourfulness/value"],
            "colourfulness_after": r_after["colourfulness/value"],
            "colour_cast_after": r_after["cast/value"],
            "neutral_tint_input": neutral_tint(inputs, inputs),
            "neutral_tint_before": neutral_tint(before, inputs),
            "neutral_tint_after": neutral_tint(after, inputs),
            "ssim_after_vs_base": ssim_luma(after, before), "ssim_floor": SSIM_FLOOR,
            "grid_penalty_before": r_before["grid/grid_penalty"],
            "grid_penalty_after": r_after["grid/grid_penalty"],
            "grid_penalty_matched_edit": r_matched["grid/grid_penalty"],
            "grid_coherent_before": float(coherent(before).mean()),
            "grid_coherent_after": float(coherent(after).mean()),
            "grid_coherent_matched_edit": float(coherent(matched).mean()),
            "lattice_share_before": r_before["lattice/share"],
            "lattice_share_after": r_after["lattice/share"],
            "texture_before": texture(before), "texture_after": texture(after),
            "texture_matched_edit": texture(matched),
            "matched_edit_residual_rms": float((after - matched).pow(2).mean().sqrt()),
            "noise_draws": draws,
            "grid_excess_per_draw": [
                metrics_to_floats(reward(a, x, None)[1])["grid/grid_penalty"]
                - metrics_to_floats(reward(m, x, None)[1])["grid/grid_penalty"]
                for a, m, x in zip(after.chunk(draws), matched.chunk(draws),
                                   inputs.chunk(draws))],
        }


def _luma(images: torch.Tensor) -> float:
    return float(luminance(images.float()).mean())


if __name__ == "__main__":
    sys.exit(main())
