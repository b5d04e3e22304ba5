"""Seconds per training step and peak memory of the AlignProp step, by K and checkpointing.

    python benchmarks/bench_trainer.py                 # tiny model, CPU (default 64x64)
    python benchmarks/bench_trainer.py --full_size     # random-weight full FLUX Kontext, 512x512, GPU

One "step" = sample (N Euler steps, the last K with grad) + VAE decode + a
differentiable reward (mean luminance) + backward into the LoRA + AdamW step; the
same work as alignprop/trainer.py minus logging. Burn-in steps are not timed;
CUDA is synchronised around the timers. Peak memory: torch.cuda.max_memory_allocated
on GPU, peak RSS growth of the process on CPU (coarse).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def full_size_pipeline(dtype):
    """FLUX.1 Kontext-dev sized transformer + VAE with random weights (no download)."""
    from alignprop.models import build_tiny_pipeline
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    pipe = build_tiny_pipeline()
    pipe.transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
        axes_dims_rope=[16, 56, 56], guidance_embeds=True).to(dtype)
    pipe.vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
        scaling_factor=0.3611).to(dtype)
    return pipe


def run(args, k: int, ckpt: bool) -> dict:
    from alignprop.lora import add_lora
    from alignprop.models import build_tiny_pipeline
    from alignprop.sampler import KontextSampler, PromptEmbeds

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dtype = torch.bfloat16 if (args.full_size and device.type == "cuda") else torch.float32
    pipe = full_size_pipeline(dtype) if args.full_size else build_tiny_pipeline()
    tr = pipe.transformer.to(device)
    pipe.vae.to(device)
    params = add_lora(tr, args.rank, None, ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"])
    if ckpt:
        tr.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(params, lr=1e-4)
    sampler = KontextSampler(tr, pipe.vae, pipe.scheduler, tr.config, args.size, args.size,
                             args.steps, dtype=dtype)
    cfg = tr.config
    text = PromptEmbeds(torch.randn(args.batch, args.text_len, cfg.joint_attention_dim),
                        torch.randn(args.batch, cfg.pooled_projection_dim),
                        torch.zeros(args.text_len, 3)).to(device=device, dtype=dtype)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    tokens = sampler.encode_image(images)

    def step():
        out = sampler.sample(images, text, backprop_steps=k, image_tokens=tokens,
                             generator=torch.Generator().manual_seed(0))
        loss = -out.float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.burn_in):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"K": k, "checkpointing": ckpt, "sec_per_step": (time.perf_counter() - t0) / args.iters,
            "peak_mem_mib": round(peak, 1), "device": str(device)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full_size", action="store_true",
                   help="Random-weight full-size FLUX Kontext transformer/VAE (needs a GPU).")
    p.add_argument("--cpu", action="store_true", help="Force CPU.")
    p.add_argument("--size", type=int, default=None, help="Image side (default 64 tiny, 512 full).")
    p.add_argument("--steps", type=int, default=None, help="Sampler steps N (default 8 tiny, 28 full).")
    p.add_argument("--batch", type=int, default=1, help="Images per step.")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank.")
    p.add_argument("--text_len", type=int, default=None, help="T5 tokens (default 32 tiny, 512 full).")
    p.add_argument("--burn_in", type=int, default=1, help="Untimed steps first.")
    p.add_argument("--iters", type=int, default=3, help="Timed steps.")
    p.add_argument("--ks", default="1,2,all", help="Comma-separated K values ('all' = N).")
    p.add_argument("--json", default=None, help="Also write the results to this file.")
    args = p.parse_args()
    args.size = args.size or (512 if args.full_size else 64)
    args.steps = args.steps or (28 if args.full_size else 8)
    args.text_len = args.text_len or (512 if args.full_size else 32)
    torch.manual_seed(0)
    rows = []
    for ckpt in (False, True):
        for k in args.ks.split(","):
            kk = args.steps if k == "all" else int(k)
            try:
                row = run(args, kk, ckpt)
            except torch.OutOfMemoryError:
                row = {"K": kk, "checkpointing": ckpt, "sec_per_step": None, "peak_mem_mib": "OOM"}
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| K | grad ckpt | s/step | peak mem (MiB) |\n|---|---|---|---|")
    for r in rows:
        s = f"{r['sec_per_step']:.3f}" if r["sec_per_step"] is not None else "-"
        print(f"| {r['K']} | {'yes' if r['checkpointing'] else 'no'} | {s} | {r['peak_mem_mib']} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
