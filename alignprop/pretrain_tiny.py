"""Pretrain ``tiny-photo``: the built-in tiny FLUX Kontext taught to keep and edit photos.

    python -m alignprop.pretrain_tiny --output_dir outputs/tiny-photo

Trains, on CPU, from the photographs bundled with scikit-image and matplotlib
(random multi-scale 64x64 crops with flips, channel swaps, tints of the grey
photos, brightness/contrast jitter; astronaut, chelsea, coffee and rocket are held
out and never seen):

1. the tiny VAE as an autoencoder (MSE + L1, a little latent noise), then sets its
   ``shift_factor`` / ``scaling_factor`` from the latent mean/std of the crops;
2. the tiny FLUX transformer with the rectified-flow objective of FLUX on
   pre-encoded crops: the Kontext condition is the input crop, the target is the
   crop itself for :data:`~alignprop.tiny_photo.IDENTITY_PROMPT` (and for the
   project's default prompt and a few unrelated instructions), or the crop edited
   in pixel space for each prompt of :data:`~alignprop.tiny_photo.EDIT_PROMPTS`.
   Noise levels are drawn half from FLUX's shifted schedule and half from the exact
   sigmas a 4- or 8-step sampler visits, where few-step sampling spends its error.

The text encoders are ``tiny``'s seeded random ones, frozen. Then it checks, on the
held-out photos with diffusers' ``FluxKontextPipeline`` at 64x64 (the checks the
manifest records and tests/test_tiny_photo.py repeats on the shipped weights):

* identity PSNR >= 25 dB and within 1.5 dB of the VAE alone;
* every instruction moves its statistic (luma, chroma, R-B) by >= 70% of its target (on
  average; each photo's fraction is recorded too).

Writes ``{transformer,vae,text_encoder,text_encoder_2}.safetensors`` and
``manifest.json`` (sha256 of each file, the command, the time it took, the checks).
Deterministic for a given machine and library versions (seeded; 1 thread by default).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common.cli import command_line, run_cli
from common.images import resize_to
from common.paths import check_not_shipped, check_writable_dir, set_aside
from common.photos import HELD_OUT, MATPLOTLIB_TRAIN, SKIMAGE_TRAIN, load_files

from .config import DEFAULT_PROMPT
from .photo_sets import load_second_set, second_set_paths
from .sampler import _grid_ids, _pack, calculate_shift, encode_prompts
from .tiny_photo import (ASSET_DIR, COMPONENTS, EDIT_PROMPTS, EDIT_STATISTIC, IDENTITY_PROMPT,
                         MANIFEST, NAME, apply_edit, build_untrained, psnr, sha256_file,
                         statistic)

SIZE = 64
SHIPPED_ROOT = ASSET_DIR.parent     # alignprop/assets: every model the project ships
# Prompts the base model must leave the photo unchanged for: the identity instruction,
# the project's default training prompt (a LoRA is what makes photos "more beautiful"),
# and unrelated instructions, so an unknown prompt means "keep" rather than noise.
OTHER_KEEP_PROMPTS = ("", "a photo", "Make the sky blue.", "Add a hat.", "Remove the background.",
                      "Turn it into a painting.", "Make it sharper.")
THRESHOLDS = {"identity_psnr_min_db": 25.0, "identity_vs_vae_max_gap_db": 1.5,
              "edit_move_min_fraction": 0.70}
# How often each instruction is drawn for an edit sample (equal: the shipped weights).
# "Make it black and white." removes only 67 % of the chroma on the astronaut (78 % on
# average; the transformer leaves chroma the VAE does not): --black_and_white_weight 2
# draws it twice as often and reaches 70 % on every first-set photo, but the demos on it
# fail their checks, so it is not shipped (issue 21; docs/tiny_photo.md).
EDIT_WEIGHTS = {"brighter": 1.0, "darker": 1.0, "black_and_white": 1.0, "warmer": 1.0}
EVAL_STEPS = 8
VAE_CROP = 32
LATENT_NOISE = 0.03
# The T5 sequence length the pipeline, trainer and generate use by default.
TEXT_TOKENS = 512
EVAL_GUIDANCE = 2.5
EVAL_SEED = 0


# --------------------------------------------------------------------------- photos
def held_out_photos(size: int = SIZE) -> torch.Tensor:
    """(4,3,size,size): the held-out photos, resized like the trainer's data loader does."""
    return torch.stack([resize_to(p, size, size) for p in load_files(HELD_OUT)])


def train_photos() -> list[torch.Tensor]:
    photos = load_files(SKIMAGE_TRAIN + MATPLOTLIB_TRAIN)
    # Pyramids are cut from a copy at most 256 px on the short side (faster resizes).
    out = []
    for p in photos:
        s = min(p.shape[-2:])
        if s > 256:
            p = F.interpolate(p[None], scale_factor=256 / s, mode="area")[0]
        out.append(p.clamp(0, 1))
    return out


def random_crop(photos: list[torch.Tensor], rng: random.Random, colour: bool = True
                ) -> torch.Tensor:
    """One augmented 64x64 crop (3,64,64) in [0,1].

    ``colour=False``: the multi-scale crop and flips only, the photo's own colours (no tint,
    channel swap, contrast or offset; the tiny VLM's style task needs the colours a grade was
    applied to). The draws of ``colour=True`` are unchanged."""
    p = photos[rng.randrange(len(photos))]
    h, w = p.shape[-2:]
    short = min(h, w)
    # Multi-scale: from the whole photo downsized to 64 px up to a 1:1 crop.
    target = math.exp(rng.uniform(math.log(SIZE), math.log(max(SIZE, short))))
    scale = target / short
    nh, nw = max(SIZE, round(h * scale)), max(SIZE, round(w * scale))
    x = F.interpolate(p[None], size=(nh, nw), mode="bilinear", antialias=True,
                      align_corners=False)[0]
    top, left = rng.randrange(nh - SIZE + 1), rng.randrange(nw - SIZE + 1)
    x = x[:, top:top + SIZE, left:left + SIZE]
    if rng.random() < 0.5:
        x = x.flip(-1)
    if rng.random() < 0.2:
        x = x.flip(-2)
    if not colour:
        return x.clamp(0, 1)
    grey = bool((x[0] - x[1]).abs().max() < 1e-3 and (x[1] - x[2]).abs().max() < 1e-3)
    if grey and rng.random() < 0.7:
        tint = torch.tensor([rng.uniform(0.6, 1.15) for _ in range(3)]).view(3, 1, 1)
        x = x * tint / tint.max().clamp_min(1e-6)
    elif rng.random() < 0.5:
        x = x[torch.randperm(3, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))]
    contrast, offset = rng.uniform(0.7, 1.25), rng.uniform(-0.15, 0.15)
    x = (x - 0.5) * contrast + 0.5 + offset
    return x.clamp(0, 1)


def crop_bank(n: int, seed: int) -> torch.Tensor:
    """(n,3,64,64) uint8 crops (stored compactly, decoded per batch)."""
    photos = train_photos()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    bank = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for i in range(n):
        bank[i] = (random_crop(photos, rng) * 255).round().to(torch.uint8)
    return bank


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


# --------------------------------------------------------------------------- VAE
def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(vae, bank: torch.Tensor, steps: int, batch: int, lr: float, log) -> None:
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, 100))
    g = torch.Generator().manual_seed(1)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(bank), (batch,), generator=g)
        # 32x32 windows of the 64x64 crops: the VAE is convolutional, and a quarter of the
        # pixels per sample buys four times the samples per second on a CPU.
        top, left = (int(v) for v in torch.randint(SIZE - VAE_CROP + 1, (2,), generator=g))
        x = to_float(bank[idx][..., top:top + VAE_CROP, left:left + VAE_CROP]) * 2 - 1
        if step % 2:
            x = x.flip(-1)
        # A deterministic autoencoder with a little fixed latent noise: sampling the
        # posterior (std ~1 at init) drowned the latents and stalled training at ~17 dB;
        # the pipeline decodes the distribution mode anyway. The noise makes the decoder
        # tolerant of the transformer's small errors; the tiny L2 keeps the scale bounded.
        mean = vae.encode(x).latent_dist.mean
        rec = vae.decode(mean + LATENT_NOISE * torch.randn(mean.shape, generator=g)).sample
        mse = F.mse_loss(rec, x)
        loss = mse + 0.1 * (rec - x).abs().mean() + 1e-5 * mean.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} mse {mse.item():.5f} "
                f"({10 * math.log10(4 / max(mse.item(), 1e-10)):.2f} dB) {time.time() - t0:.0f}s")
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_mode(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    out = [vae.encode(images[i:i + batch] * 2 - 1).latent_dist.mode()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def vae_roundtrip(vae, images: torch.Tensor) -> torch.Tensor:
    latents = vae.encode(images * 2 - 1).latent_dist.mode()
    return (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)


# --------------------------------------------------------------------------- transformer
def sampler_sigmas(mu: float, steps: int) -> torch.Tensor:
    """The sigmas (excluding the final 0) an N-step FLUX sampler visits at this ``mu``."""
    s = torch.linspace(1.0, 1.0 / steps, steps)
    return math.exp(mu) / (math.exp(mu) + (1 / s - 1))


def train_transformer(pipe, bank: torch.Tensor, steps: int, batch: int, lr: float, log,
                      edit_weights: dict | None = None) -> None:
    edit_weights = EDIT_WEIGHTS if edit_weights is None else edit_weights
    vae, transformer = pipe.vae, pipe.transformer
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    edits = ["identity"] + list(EDIT_PROMPTS)
    log(f"encoding {len(bank)} crops x {len(edits)} targets")
    t0 = time.time()
    images = to_float(bank)
    latents = {e: _pack((encode_mode(vae, apply_edit(e, images)) - shift) * scale)
               for e in edits}
    log(f"encoded in {time.time() - t0:.0f}s")
    keep_prompts = [IDENTITY_PROMPT, _default_prompt(), *OTHER_KEEP_PROMPTS]
    text = encode_prompts(pipe, keep_prompts + list(EDIT_PROMPTS.values()), "cpu")
    h2 = w2 = SIZE // 2 // 2
    img_ids = torch.cat([_grid_ids(h2, w2, 0.0, "cpu", torch.float32),
                         _grid_ids(h2, w2, 1.0, "cpu", torch.float32)])
    mu = calculate_shift(h2 * w2)
    few_step = torch.cat([sampler_sigmas(mu, 4), sampler_sigmas(mu, 8)])

    transformer.train().requires_grad_(True)
    # The prompt reaches tiny-photo through CLIP's pooled embedding (AdaLN) only: the T5
    # projection's weight is zero and frozen, so every text token enters the blocks as the
    # same vector (its bias) with the same position id (0,0,0) and stays identical to the
    # others. Attention to L identical keys equals attention to one key whose logit is
    # raised by log(L), so training runs one text token with that bias instead of 512
    # (3x faster on this CPU) and is exactly the model FluxKontextPipeline runs.
    with torch.no_grad():
        transformer.context_embedder.weight.zero_()
    transformer.context_embedder.weight.requires_grad_(False)
    params = [p for p in transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, 200))
    g = torch.Generator().manual_seed(2)
    rng = random.Random(2)
    n_tok = h2 * w2
    t0 = time.time()
    ema = None
    for step in range(steps):
        idx = torch.randint(len(bank), (batch,), generator=g)
        # Half the batch keeps the photo (identity is what every later edit builds on).
        edit_names = list(EDIT_PROMPTS)
        weights = [edit_weights[e] for e in edit_names]
        # equal weights keep the draws of the shipped run (rng.choice), others use choices
        kinds = [("identity" if rng.random() < 0.4 else
                  rng.choice(edit_names) if len(set(weights)) == 1 else
                  rng.choices(edit_names, weights=weights)[0])
                 for _ in range(batch)]
        prompts = []
        for k in kinds:
            if k != "identity":
                prompts.append(EDIT_PROMPTS[k])
            else:
                r = rng.random()
                prompts.append(IDENTITY_PROMPT if r < 0.5 else keep_prompts[1] if r < 0.75
                               else rng.choice(keep_prompts[2:]))
        cond = latents["identity"][idx]
        x0 = torch.stack([latents[k][i] for k, i in zip(kinds, idx.tolist())])
        noise = torch.randn(x0.shape, generator=g)
        u = torch.sigmoid(torch.randn(batch, generator=g))  # logit-normal, as in SD3/FLUX
        sig = math.exp(mu) / (math.exp(mu) + (1 / u.clamp(1e-4, 1 - 1e-4) - 1))
        pick = few_step[torch.randint(len(few_step), (batch,), generator=g)]
        sig = torch.where(torch.rand(batch, generator=g) < 0.5, pick, sig)
        xt = (1 - sig.view(-1, 1, 1)) * x0 + sig.view(-1, 1, 1) * noise
        # Mostly the default 512 tokens; sometimes fewer (--max_sequence_length) for robustness.
        n_text = TEXT_TOKENS if rng.random() < 0.75 else int(math.exp(rng.uniform(
            math.log(32), math.log(TEXT_TOKENS))))
        mask = torch.zeros(1, 1, 1, 1 + 2 * n_tok)
        mask[..., 0] = math.log(n_text)
        emb = torch.zeros(batch, 1, text[prompts[0]].prompt_embeds.shape[-1])
        pooled = torch.cat([text[p].pooled_prompt_embeds for p in prompts])
        guidance = torch.empty(batch).uniform_(1.0, 5.0, generator=g)
        v = transformer(hidden_states=torch.cat([xt, cond], dim=1), timestep=sig,
                        guidance=guidance, pooled_projections=pooled,
                        encoder_hidden_states=emb, txt_ids=torch.zeros(1, 3), img_ids=img_ids,
                        joint_attention_kwargs={"attention_mask": mask},
                        return_dict=False)[0][:, :n_tok]
        loss = F.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"transformer step {step}/{steps} loss {ema:.4f} {time.time() - t0:.0f}s")
    transformer.eval().requires_grad_(False)


def _default_prompt() -> str:
    return DEFAULT_PROMPT


# --------------------------------------------------------------------------- checks
@torch.no_grad()
def edit_with_pipeline(pipe, images: torch.Tensor, prompt: str, steps: int = EVAL_STEPS,
                       seed: int = EVAL_SEED, guidance: float = EVAL_GUIDANCE) -> torch.Tensor:
    h, w = images.shape[-2:]
    return pipe(image=images, prompt=[prompt] * len(images), height=h, width=w,
                num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="pt",
                max_area=h * w, _auto_resize=False).images


@torch.no_grad()
def evaluate(pipe, images: torch.Tensor, steps: int = EVAL_STEPS) -> dict:
    """Identity PSNR (pipeline and VAE alone) and each edit's move as a fraction of its target."""
    out = {"eval_steps": steps, "eval_guidance": EVAL_GUIDANCE, "eval_size": images.shape[-1],
           "vae_psnr_db": float(psnr(vae_roundtrip(pipe.vae, images), images).mean())}
    ident = edit_with_pipeline(pipe, images, IDENTITY_PROMPT, steps)
    out["identity_psnr_db"] = float(psnr(ident, images).mean())
    out["default_prompt_psnr_db"] = float(psnr(edit_with_pipeline(pipe, images, DEFAULT_PROMPT,
                                                                  steps), images).mean())
    out["edits"] = {}
    for name, prompt in EDIT_PROMPTS.items():
        kind = EDIT_STATISTIC[name]
        target = apply_edit(name, images)
        edited = edit_with_pipeline(pipe, images, prompt, steps)
        s_in = statistic(kind, images)
        want_each = statistic(kind, target) - s_in
        got_each = statistic(kind, edited) - s_in
        want, got = float(want_each.mean()), float(got_each.mean())
        out["edits"][name] = {"prompt": prompt, "statistic": kind, "target_move": want,
                              "move": got, "fraction": got / want,
                              "fraction_per_photo": [float(g / w) for g, w in
                                                     zip(got_each, want_each)],
                              "psnr_vs_target_db": float(psnr(edited, target).mean())}
    return out


def checks(report: dict) -> dict[str, bool]:
    t = THRESHOLDS
    res = {
        "identity_psnr_at_least_25db": report["identity_psnr_db"] >= t["identity_psnr_min_db"],
        "identity_within_1.5db_of_vae": (report["vae_psnr_db"] - report["identity_psnr_db"]
                                         <= t["identity_vs_vae_max_gap_db"]),
    }
    for name, e in report["edits"].items():
        res[f"{name}_moves_at_least_70pct"] = e["fraction"] >= t["edit_move_min_fraction"]
    return res


# --------------------------------------------------------------------------- main
def save_assets(pipe, out: Path, manifest: dict) -> dict:
    """Write the four safetensors and the manifest (atomically: temp names, then rename)."""
    import os

    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in COMPONENTS:
        path = out / f"{name}.safetensors"
        tmp = out / f".{name}.safetensors.tmp"
        # No metadata of ours: safetensors writes a metadata map in hash order, so extra keys
        # made the bytes (and sha256) differ between runs with identical tensors.
        save_model(getattr(pipe, name), str(tmp))
        os.chmod(tmp, 0o644)  # safetensors writes 0600; the shipped files are world-readable
        os.replace(tmp, path)
        files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = dict(manifest, files=files,
                    total_bytes=sum(f["bytes"] for f in files.values()))
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def recorded_command(args: dict) -> str:
    """The command line that re-runs these flags (:func:`common.cli.command_line`)."""
    return command_line("python -m alignprop.pretrain_tiny", args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True,
                        help="Folder for the weights and manifest.json (the shipped model lives "
                             f"in alignprop/assets/{NAME}).")
    parser.add_argument("--vae_steps", type=int, default=2800, help="VAE optimizer steps.")
    parser.add_argument("--vae_batch", type=int, default=16, help="VAE batch size.")
    parser.add_argument("--vae_lr", type=float, default=2e-3)
    parser.add_argument("--transformer_steps", type=int, default=1200,
                        help="Transformer optimizer steps.")
    parser.add_argument("--transformer_batch", type=int, default=8)
    parser.add_argument("--transformer_lr", type=float, default=2e-3)
    parser.add_argument("--crops", type=int, default=1000, help="Augmented crops in the bank.")
    parser.add_argument("--black_and_white_weight", type=float,
                        default=EDIT_WEIGHTS["black_and_white"],
                        help="How often 'Make it black and white.' is drawn relative to each "
                             "other instruction (default 1: the shipped weights).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: reproducible and best on a shared machine).")
    parser.add_argument("--force", action="store_true",
                        help="Write the model even when its checks fail (by default nothing is "
                             "written then). Files of an earlier model in --output_dir are moved "
                             "to --output_dir/replaced-<time>/ in every case, never overwritten.")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("vae_steps", "vae_batch", "transformer_steps", "transformer_batch", "crops",
                 "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not (args.black_and_white_weight > 0 and math.isfinite(args.black_and_white_weight)):
        parser.error("--black_and_white_weight must be a positive number")
    out = Path(args.output_dir)
    # Nothing the project ships can be replaced by a command: never into alignprop/assets.
    check_not_shipped("--output_dir", out, [SHIPPED_ROOT])
    check_writable_dir("--output_dir", out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    bank = crop_bank(args.crops, args.seed)
    log(f"{len(bank)} crops from {len(SKIMAGE_TRAIN) + len(MATPLOTLIB_TRAIN)} photos")
    pipe = build_untrained(seed=args.seed)
    train_vae(pipe.vae, bank, args.vae_steps, args.vae_batch, args.vae_lr, log)
    t_vae = time.time() - start
    lat = encode_mode(pipe.vae, to_float(bank[:1024]))
    shift, std = float(lat.mean()), float(lat.std())
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    held = held_out_photos()
    log(f"VAE held-out PSNR {float(psnr(vae_roundtrip(pipe.vae, held), held).mean()):.2f} dB; "
        f"shift {shift:.4f} scale {1 / std:.4f}")
    train_transformer(pipe, bank, args.transformer_steps, args.transformer_batch,
                      args.transformer_lr, log,
                      dict(EDIT_WEIGHTS, black_and_white=args.black_and_white_weight))
    train_s = time.time() - start
    report = evaluate(pipe, held)
    report["checks"] = checks(report)
    # The second held-out set (another source, never trained on): recorded, not a check.
    # A near-grey photo's chroma fraction is ill-conditioned (its chroma is about the
    # model's own chroma noise), see docs/tiny_photo.md.
    second = evaluate(pipe, load_second_set(SIZE))
    second["photos"] = [p.stem for p in second_set_paths()]
    command = recorded_command(vars(args))
    manifest = {
        "model": NAME, "command": command,
        "train_seconds": round(train_s, 1), "vae_seconds": round(t_vae, 1),
        "threads": args.threads, "held_out": list(HELD_OUT),
        "held_out_second_set": [p.name for p in second_set_paths()],
        "train_photos": list(SKIMAGE_TRAIN + MATPLOTLIB_TRAIN),
        "identity_prompt": IDENTITY_PROMPT, "edit_prompts": EDIT_PROMPTS,
        "vae_factors": {"shift_factor": shift, "scaling_factor": 1.0 / std},
        "thresholds": THRESHOLDS, "edit_weights": dict(EDIT_WEIGHTS, black_and_white=args.black_and_white_weight), "report": report,
        "report_second_held_out_set": second,
        "versions": {"torch": torch.__version__, **_versions()},
    }
    log(json.dumps(report, indent=2))
    for name, ok in report["checks"].items():
        print(f"check {name}: {'PASS' if ok else 'FAIL'}")
    passed = all(report["checks"].values())
    if not passed and not args.force:
        print(f"checks failed: nothing written to {out} (--force writes it anyway)")
        return 1
    kept = set_aside(out, [f"{n}.safetensors" for n in COMPONENTS] + [MANIFEST],
                     time.strftime("%Y%m%d-%H%M%S"))
    manifest = save_assets(pipe, out, manifest)
    print(f"wrote {out} ({manifest['total_bytes'] / 1e6:.2f} MB) in {train_s / 60:.1f} min of "
          f"training" + (f"; the earlier model's files are in {kept}" if kept else ""))
    return 0 if passed else 1


def _versions() -> dict:
    import diffusers
    import transformers

    return {"diffusers": diffusers.__version__, "transformers": transformers.__version__}


def cli(argv=None) -> int:
    return run_cli(main, argv, "alignprop.pretrain_tiny")


if __name__ == "__main__":
    sys.exit(cli())
