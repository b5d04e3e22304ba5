"""`make demo`: a short AlignProp run of the built-in tiny FLUX Kontext on bundled photos.

    python -m alignprop.demo --output_dir outputs/demo

Writes the bundled photos (scikit-image's sample photographs) to
``<output_dir>/photos``, trains a LoRA for a few dozen steps with the math-only
rewards (brightness toward a target, FFT anti-grid, crispness floor), then:

* ``pytorch_lora_weights.safetensors`` -- the LoRA in diffusers format;
* ``reward_curve.png``                 -- reward per step (metrics.jsonl);
* ``grid.png``                         -- input | before | after, where "before" and
  "after" are produced by diffusers' own ``FluxKontextPipeline`` with the same seed,
  without and with ``pipe.load_lora_weights(output_dir)``.

The tiny model has random weights, so the images are not pretty: the demo shows the
machinery (reward goes up, the LoRA loads in diffusers and changes the output), on a
2-core CPU in about two minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera")
SIZE = 32
DEMO_STEPS = 40
BRIGHTNESS_TARGET = 0.65


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

    # Brightness dominates (a visible, monotone goal); anti-grid and crispness are small
    # guard terms, as in real runs where they keep the optimisation from cheating.
    return RewardFlags(brightness_anchor_weight=10.0, brightness_target=BRIGHTNESS_TARGET,
                       brightness_band=0.02, grid_ratio_weight=0.1, grid_eval_resize=0,
                       crispness_weight=0.1, crispness_eval_resize=0)


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
    parser.add_argument("--media_dir", default=None,
                        help="Also copy the two figures here as demo_reward_curve.png and "
                             "demo_grid.png (the repository uses media/).")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2")

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
        train_batch_size=2, max_train_steps=args.steps, train_learning_rate=3e-2,
        lora_rank=8, lora_target_modules="attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,"
                                         "ff.net.2,proj_mlp,proj_out",
        save_freq=0, log_image_freq=10, log_with="tensorboard", seed=0,
        mixed_precision="no")
    flags = demo_reward_flags()
    t0 = time.time()
    result = train(cfg, flags)
    train_s = time.time() - t0

    # Before / after with diffusers' own pipeline and loader.
    folder = ImageFolder(photos, SIZE, SIZE, cfg.prompt)
    inputs = torch.stack([folder.load(i) for i in range(len(folder))])
    pipe = build_tiny_pipeline()
    before = _edit_with_pipeline(pipe, inputs, cfg.prompt, cfg.sample_num_steps, seed=1)
    pipe.load_lora_weights(str(out))
    after = _edit_with_pipeline(pipe, inputs, cfg.prompt, cfg.sample_num_steps, seed=1)
    reward = build_reward_from_flags(flags)
    r_before = reward(before, inputs, None)[1]
    r_after = reward(after, inputs, None)[1]

    grid = image_grid([inputs, before, after])
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest")[0],
               out / "grid.png")
    rows = read_metrics(out / "metrics.jsonl")
    plot_reward_curve(rows, out / "reward_curve.png", keys=("train/reward",),
                      title="tiny FLUX Kontext demo: brightness + anti-grid + crispness")
    summary = {"steps": result.global_step, "train_seconds": round(train_s, 1),
               "reward_first_5": sum(r["train/reward"] for r in rows[:5]) / min(5, len(rows)),
               "reward_last_5": sum(r["train/reward"] for r in rows[-5:]) / min(5, len(rows)),
               "held_out_reward_before": r_before["reward"], "held_out_reward_after": r_after["reward"],
               "mean_luma_before": r_before.get("brightness/mean_luma"),
               "mean_luma_after": r_after.get("brightness/mean_luma"),
               "brightness_target": BRIGHTNESS_TARGET}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    if args.media_dir:
        import shutil

        media = Path(args.media_dir)
        media.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "reward_curve.png", media / "demo_reward_curve.png")
        shutil.copyfile(out / "grid.png", media / "demo_grid.png")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'pytorch_lora_weights.safetensors'}, {out / 'reward_curve.png'}, "
          f"{out / 'grid.png'} (columns: input | before | after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
