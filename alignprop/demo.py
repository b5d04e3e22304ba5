"""`make demo`: a short AlignProp run of the built-in tiny FLUX Kontext on bundled photos.

    python -m alignprop.demo --output_dir outputs/demo

Writes the bundled photos (scikit-image's sample photographs) to
``<output_dir>/photos``, trains a LoRA at 64x64 for 120 steps with the math-only
rewards (brightness toward a target, FFT anti-grid, crispness floor) plus a demo-only
penalty on periodic texture, then:

* ``pytorch_lora_weights.safetensors`` -- the LoRA in diffusers format;
* ``reward_curve.png``                 -- reward per step (metrics.jsonl);
* ``grid.png``                         -- input | before | after, where "before" and
  "after" are produced by diffusers' own ``FluxKontextPipeline`` with the same seed,
  without and with ``pipe.load_lora_weights(output_dir)``;
* ``demo_summary.json``                -- reward, brightness, grid penalty and periodic
  energy before/after, and three checks (printed as PASS/FAIL).

The tiny model has random weights, so the images are noise: the demo shows the
machinery (the reward goes up, the LoRA loads in diffusers and makes the output
brighter) without the periodic texture a reward hack would paint. About 25 s of
training on a quiet 2-core CPU.

Why the unusual settings: the tiny VAE decoder's GroupNorms largely cancel uniform
latent offsets, so a brightness change needs a big uniform latent shift (several
latent std), while a texture repeating on the token grid brightens far more cheaply.
With LoRA on the attention/MLP layers the LoRA paints exactly that texture (stripes).
Here the LoRA sits only on ``norm_out.linear`` (the AdaLN scale/shift of the final
norm: one vector per timestep, the same for every token), so all it can do is move
each token's channel statistics; the anti-grid term (weight 20) and a penalty on the
luma power at the 2/4/8-px lattice (weight 3000, ``lattice_share``) rule out the
only texture left to it, a pattern inside the 2x2 token. Brightness is then reached
smoothly, at a learning rate (0.3) and step count (120) that the slow, uniform path needs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera")
SIZE = 64
DEMO_STEPS = 120
LEARNING_RATE = 0.3
# Only the final norm's AdaLN modulation: it is token-independent, so the LoRA can shift
# latent channel statistics but cannot draw spatial texture (see the module docstring).
LORA_TARGETS = "norm_out.linear"
BRIGHTNESS_WEIGHT = 1000.0
BRIGHTNESS_TARGET = 0.65
# The squared hinge is (0.63 - luma)^2 ~ 0.04 at the start: weight 1000 makes it the main term.
GRID_WEIGHT = 20.0
LATTICE_WEIGHT = 3000.0
# The brightness check asks for a real move, not any move (the luma of noise drifts ~0.001).
MIN_BRIGHTNESS_MOVE = 0.02
# The tiny model's token grid: VAE stride 2 x 2x2 token packing = 4 px (FLUX: 8 x 2 = 16);
# the anti-grid comb also covers the 8 and 32 px octaves.
GRID_PERIOD = 4
# The tiny VAE's own stride is 2 px, which is the Nyquist frequency at native size where
# no FFT comb can measure a period. The rewards therefore see the outputs upsampled 2x
# (nearest), which maps 2 / 4 px patterns to 4 / 8 px (brightness is unchanged by it).
UPSAMPLE = 2
# A pattern repeating every 2, 4 or 8 px has all its energy on the frequencies that are
# multiples of 1/8 px^-1; their share of the AC power measures "periodic texture"
# independently of the reward (white noise: 63/4095 = 1.5 %).
LATTICE_PERIOD = 8


def write_photos(folder: Path) -> list[Path]:
    """Save scikit-image's bundled photos as PNGs (grayscale 'camera' included on purpose)."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).save(path)
        paths.append(path)
    return paths


def demo_reward_flags():
    from .reward_flags import RewardFlags

    # Brightness is the goal; the anti-grid term (with the lattice penalty added in main)
    # stops the LoRA from reaching it with a periodic texture; crispness is a guard.
    return RewardFlags(brightness_anchor_weight=BRIGHTNESS_WEIGHT,
                       brightness_target=BRIGHTNESS_TARGET,
                       brightness_band=0.02, grid_ratio_weight=GRID_WEIGHT,
                       grid_ratio_period=GRID_PERIOD, grid_eval_resize=0,
                       crispness_weight=0.1, crispness_eval_resize=0)


def upsampled_reward(reward, factor: int):
    """``reward`` evaluated on images nearest-upsampled ``factor`` times (differentiable)."""
    if factor == 1:
        return reward
    import torch.nn.functional as F

    def up(x):
        return None if x is None else F.interpolate(x, scale_factor=factor, mode="nearest")

    def fn(images, inputs, prompts):
        return reward(up(images), up(inputs), prompts)

    fn.terms = reward.terms  # run_config.json lists the terms
    fn.upsample = factor
    return fn


def lattice_share(images: torch.Tensor, period: int = LATTICE_PERIOD) -> torch.Tensor:
    """[B] share of the luma AC power on the frequencies of patterns repeating every ``period`` px.

    Differentiable: the demo also trains against it (``with_lattice_penalty``).
    """
    from rewards.grid import luminance

    lum = luminance(images.float())
    lum = lum - lum.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(lum).abs() ** 2
    h, w = lum.shape[-2:]
    lattice = torch.zeros(h, w, dtype=torch.bool)
    lattice[::max(1, h // period), ::max(1, w // period)] = True
    lattice[0, 0] = False  # DC
    return power[:, lattice].sum(-1) / power.sum(dim=(-2, -1)).clamp_min(1e-12)


def lattice_energy_share(images: torch.Tensor, period: int = LATTICE_PERIOD) -> float:
    """Mean of ``lattice_share`` over the batch (the number the summary reports)."""
    with torch.no_grad():
        return float(lattice_share(images, period).mean())


def with_lattice_penalty(reward, weight: float):
    """``reward`` minus ``weight`` x lattice share at native size (demo-only texture guard).

    A texture inside the 2x2 token (the only one a LoRA on ``norm_out.linear`` can
    draw) repeats every 2 or 4 px, so all its power lands on this lattice; a smooth
    brightness change does not pay this penalty. Logged as ``lattice/share`` and
    ``lattice/weighted``.
    """
    if weight == 0:
        return reward

    def fn(images, inputs, prompts):
        scores, metrics = reward(images, inputs, prompts)
        share = lattice_share(images)
        scores = scores - weight * share
        metrics = dict(metrics)
        metrics["lattice/share"] = float(share.detach().mean())
        metrics["lattice/weighted"] = -weight * metrics["lattice/share"]
        metrics["reward"] = float(scores.detach().mean())
        return scores, metrics

    fn.terms = reward.terms
    fn.lattice_weight = weight
    return fn


def demo_checks(summary: dict) -> dict[str, bool]:
    """What the demo promises: anti-grid not worse, brightness closer, no new periodic texture."""
    target = summary["brightness_target"]
    moved = abs(summary["mean_luma_before"] - target) - abs(summary["mean_luma_after"] - target)
    return {
        "grid_penalty_not_higher": summary["grid_penalty_after"] <= summary["grid_penalty_before"],
        "brightness_moved_toward_target": moved >= MIN_BRIGHTNESS_MOVE,
        "no_new_periodic_texture": (summary["lattice_share_after"]
                                    <= 1.25 * summary["lattice_share_before"]),
    }


@torch.no_grad()
def _edit_with_pipeline(pipe, images, prompt, steps, seed):
    return pipe(image=images, prompt=[prompt] * len(images), height=SIZE, width=SIZE,
                num_inference_steps=steps, guidance_scale=2.5,
                generator=torch.Generator().manual_seed(seed), output_type="pt",
                max_area=SIZE * SIZE, _auto_resize=False).images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/demo", help="Where everything goes.")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help="Optimizer steps.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the tiny model's ops are too small "
                             "to gain from more, and on a busy machine OpenMP threads waiting "
                             "for each other made steps up to 50x slower; 0 = torch's default).")
    parser.add_argument("--media_dir", default=None,
                        help="Also copy the two figures here as demo_reward_curve.png and "
                             "demo_grid.png (the repository uses media/).")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    from .config import TrainConfig
    from .data import ImageFolder
    from .logging_utils import image_grid, plot_reward_curve, read_metrics
    from .models import build_tiny_pipeline
    from .reward_flags import build_reward_from_flags
    from .trainer import train
    from rewards.images import save_image

    out = Path(args.output_dir)
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh curve on every run
    photos = out / "photos"
    write_photos(photos)
    cfg = TrainConfig(
        pretrained_model="tiny", data_dir=str(photos), output_dir=str(out),
        image_height=SIZE, image_width=SIZE, sample_num_steps=4, backprop_steps=-1,
        train_batch_size=2, max_train_steps=args.steps, train_learning_rate=LEARNING_RATE,
        lora_rank=8, lora_target_modules=LORA_TARGETS,
        save_freq=0, log_image_freq=10, log_with="tensorboard", seed=0,
        mixed_precision="no")
    flags = demo_reward_flags()
    reward = with_lattice_penalty(upsampled_reward(build_reward_from_flags(flags), UPSAMPLE),
                                  LATTICE_WEIGHT)
    t0 = time.time()
    result = train(cfg, flags, reward_fn=reward)
    train_s = time.time() - t0

    # Before / after with diffusers' own pipeline and loader.
    folder = ImageFolder(photos, SIZE, SIZE, cfg.prompt)
    inputs = torch.stack([folder.load(i) for i in range(len(folder))])
    pipe = build_tiny_pipeline()
    before = _edit_with_pipeline(pipe, inputs, cfg.prompt, cfg.sample_num_steps, seed=1)
    pipe.load_lora_weights(str(out))
    after = _edit_with_pipeline(pipe, inputs, cfg.prompt, cfg.sample_num_steps, seed=1)
    r_before = reward(before, inputs, None)[1]
    r_after = reward(after, inputs, None)[1]

    grid = image_grid([inputs, before, after])
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest")[0],
               out / "grid.png")
    rows = read_metrics(out / "metrics.jsonl")
    plot_reward_curve(rows, out / "reward_curve.png",
                      keys=("train/reward", "train/brightness/weighted", "train/grid/weighted",
                            "train/lattice/weighted"),
                      title="tiny FLUX Kontext demo: brightness + anti-grid + lattice")
    summary = {"steps": result.global_step, "size": SIZE, "train_seconds": round(train_s, 1),
               "reward_first_5": sum(r["train/reward"] for r in rows[:5]) / min(5, len(rows)),
               "reward_last_5": sum(r["train/reward"] for r in rows[-5:]) / min(5, len(rows)),
               "held_out_reward_before": r_before["reward"],
               "held_out_reward_after": r_after["reward"],
               "brightness_target": BRIGHTNESS_TARGET,
               "mean_luma_before": r_before["brightness/mean_luma"],
               "mean_luma_after": r_after["brightness/mean_luma"],
               "grid_penalty_before": r_before["grid/grid_penalty"],
               "grid_penalty_after": r_after["grid/grid_penalty"],
               "lattice_share_inputs": lattice_energy_share(inputs),
               "lattice_share_before": lattice_energy_share(before),
               "lattice_share_after": lattice_energy_share(after)}
    summary["checks"] = demo_checks(summary)
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    if args.media_dir:
        import shutil

        media = Path(args.media_dir)
        media.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "reward_curve.png", media / "demo_reward_curve.png")
        shutil.copyfile(out / "grid.png", media / "demo_grid.png")
    print(json.dumps(summary, indent=2))
    for name, ok in summary["checks"].items():
        print(f"check {name}: {'PASS' if ok else 'FAIL'}")
    print(f"wrote {out / 'pytorch_lora_weights.safetensors'}, {out / 'reward_curve.png'}, "
          f"{out / 'grid.png'} (columns: input | before | after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
