"""Per-rank weight + optimizer memory of a sharded (FSDP2) run, computed, not measured.

    PYTHONPATH=. python benchmarks/fsdp_memory.py                    # FLUX.1 Kontext + InternVL3-14B
    PYTHONPATH=. python benchmarks/fsdp_memory.py --vlm 8B     # or --no_vlm, --lora_rank 64

Builds the real models on PyTorch's ``meta`` device (shapes only: no weights, no RAM, no
GPU) from their published configurations, counts parameters, and applies FSDP2's
arithmetic for N = 1, 2, 4, 8 processes:

* frozen transformer (bf16): split N ways;
* LoRA (fp32) + its gradient (fp32) + AdamW's two moments (fp32) = 16 bytes/parameter,
  split N ways;
* while a block runs it is gathered whole: the largest block, twice (FSDP2 prefetches the
  next one), in bf16; N = 1 is not sharded, so there is nothing extra to gather;
* VAE (bf16) on every rank; the text encoders are freed after the prompts are encoded;
* reward VLM (bf16), by ``--reward_device``: ``replicate`` whole on every rank, ``shard``
  split N ways + its two largest layers gathered, ``dedicated`` on its own card.

Activations do not shrink with N (each rank samples its own images) and depend on
resolution, K and checkpointing. ``--activations`` takes them from ``--estimate`` (the
fake-tensor trace of one optimizer step, alignprop/estimate.py) of the README's training
command with ``--gradient_checkpointing`` and this ``--vlm``/``--lora_rank``: the
transformer, VAE and no-grad activations sit on the training card, the reward models'
activations on the card that holds the reward models (the same card for replicate and
shard, the reward card for dedicated), and each row gets a verdict per card size: "fits"
when weights + activations are under (size - 1 GB) x 90 %, "tight" when only under the
size, "no" otherwise (the estimator's rule).
"""
from __future__ import annotations

import argparse

import torch
from common.cli import positive_int

GB = 1e9
# Public configurations (diffusers / transformers layouts).
KONTEXT = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
               attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
               pooled_projection_dim=768, axes_dims_rope=(16, 56, 56), guidance_embeds=True)
_VISION = dict(  # InternViT-300M-448px-V2_5, shared by InternVL3-2B/8B/14B
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, image_size=[448, 448], patch_size=[14, 14],
    attention_bias=True, use_qk_norm=False, norm_type="layer_norm",
    use_mean_pooling=True, layer_scale_init_value=0.1)
INTERNVL3 = {  # OpenGVLab/InternVL3-<size>-hf language models (Qwen2.5)
    "14B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                num_attention_heads=40, num_key_value_heads=8),
    "8B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4),
    "2B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
               num_attention_heads=12, num_key_value_heads=2),
}
CONTEXT_GB, FRAGMENTATION = 1.0, 0.10  # CUDA context; allocator fragmentation share
CARDS_GB = (24, 40, 48, 80)
# The README's training command ("Training"), estimated with gradient checkpointing.
README_FLAGS = [
    "--data_dir", "./train_images", "--mixed_precision", "bf16", "--image_height", "512",
    "--image_width", "512", "--sample_num_steps", "5", "--train_learning_rate", "1e-4",
    "--train_gradient_accumulation_steps", "4", "--aesthetic_model_type", "internvl",
    "--aesthetic_reward_scale", "6", "--similarity_backend", "internvl-content",
    "--image_reward_scale", "1.5", "--sharpness_backend", "internvl",
    "--sharpness_reward_scale", "2", "--grid_ratio_weight", "1", "--grid_ratio_period", "16",
    "--brightness_target", "0.45", "--brightness_band", "0.08",
    "--brightness_anchor_weight", "10", "--gradient_checkpointing", "--estimate"]


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


def kontext_counts(lora_rank: int) -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from alignprop.config import DEFAULT_LORA_TARGETS
    from alignprop.lora import add_lora

    with torch.device("meta"):
        t = FluxTransformer2DModel(**KONTEXT)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            use_quant_conv=False, use_post_quant_conv=False)
    base = _n(t)
    lora = sum(p.numel() for p in add_lora(t, lora_rank, None, DEFAULT_LORA_TARGETS.split(",")))
    block = max(_n(b) for b in list(t.transformer_blocks) + list(t.single_transformer_blocks))
    return {"transformer": base, "lora": lora, "block": block, "vae": _n(vae)}


def vlm_counts(size: str) -> dict:
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    text = dict(model_type="qwen2", vocab_size=151674, tie_word_embeddings=False,
                **INTERNVL3[size])
    cfg = InternVLConfig(vision_config=dict(model_type="internvl_vision", **_VISION),
                         text_config=text, downsample_ratio=0.5, image_seq_length=256,
                         image_token_id=151667, tie_word_embeddings=False)
    with torch.device("meta"):
        m = InternVLForConditionalGeneration(cfg)
    layer = max(_n(layer) for layer in m.model.language_model.layers)
    return {"vlm": _n(m), "vlm_layer": layer}


def per_rank(c: dict, n: int, placement: str | None) -> float:
    """Bytes per rank of weights + LoRA training state (no activations)."""
    b = 2 * c["transformer"] / n + 16 * c["lora"] / n + 2 * c["vae"]
    if n > 1:
        b += 2 * 2 * c["block"]
    if placement == "replicate":
        b += 2 * c["vlm"]
    elif placement == "shard":
        b += 2 * c["vlm"] / n + (2 * 2 * c["vlm_layer"] if n > 1 else 0)
    return b


def activations(vlm: str | None, lora_rank: int) -> tuple[float, float, str]:
    """(training-card bytes, reward-card bytes, description) of the README command's
    activations at the peak of one step, from the estimator."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from alignprop.config import parse_config
    from alignprop.estimate import estimate_training

    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "ref.png"  # --style_reference must name an image; only its size counts
        Image.fromarray(np.full((512, 512, 3), 128, np.uint8)).save(ref)
        flags = README_FLAGS + ["--lora_rank", str(lora_rank)]
        if vlm is None:
            flags = _drop(flags, ("--aesthetic_model_type", "--similarity_backend",
                                  "--sharpness_backend", "--aesthetic_reward_scale",
                                  "--image_reward_scale", "--sharpness_reward_scale"))
            flags += ["--aesthetic_model_type", "none"]
        else:
            flags += ["--style_reference", str(ref),
                      "--internvl_model_id", f"OpenGVLab/InternVL3-{vlm}-hf"]
        cfg, rewards = parse_config(flags)
        est = estimate_training(cfg, rewards)
    train_b = reward_b = 0
    for label, b in est.breakdown.items():
        if label.startswith("activations: reward"):
            reward_b += b
        elif label.startswith("activations"):
            train_b += b
    what = (f"README command at 512x512, K=1, --gradient_checkpointing, LoRA rank {lora_rank}"
            + (f", InternVL3-{vlm} in {sum(1 for k in est.breakdown if 'reward' in k)} "
               f"term(s)" if vlm else ", no VLM"))
    return train_b, reward_b, what


def _drop(flags: list[str], names: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
            continue
        if f in names:
            skip = True
            continue
        out.append(f)
    return out


def _verdict(need: float, card_gb: float) -> str:
    if need <= (card_gb - CONTEXT_GB) * (1 - FRAGMENTATION) * GB:
        return "fits"
    return "tight" if need <= card_gb * GB else "no"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lora_rank", type=positive_int, default=16)
    ap.add_argument("--vlm", default="14B", choices=sorted(INTERNVL3),
                    help="InternVL3 size of the reward VLM")
    ap.add_argument("--no_vlm", action="store_true", help="no VLM reward (math rewards only)")
    ap.add_argument("--activations", action="store_true",
                    help="add the README command's activations from --estimate (~30 s) and "
                         "print a verdict per card size")
    args = ap.parse_args(argv)
    c = kontext_counts(args.lora_rank)
    if not args.no_vlm:
        c.update(vlm_counts(args.vlm))
    print("parameters: " + ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in c.items()))
    placements = [None] if args.no_vlm else ["replicate", "shard", "dedicated"]
    print("N = training processes (cards; 'dedicated' uses 2N cards: N train, N score)")
    act = None
    if args.activations:
        act = activations(None if args.no_vlm else args.vlm, args.lora_rank)
        print(f"activations ({act[2]}): {act[0] / GB:.1f} GB on the training card, "
              f"{act[1] / GB:.1f} GB where the reward models are")
    head = "N  reward_device | weights+LoRA state per rank | left for activations on " + \
           " / ".join(f"{m} GB" for m in CARDS_GB)
    if act:
        head += " | verdict with activations (training card; reward card)"
    print(head)
    for n in (1, 2, 4, 8):
        for place in placements:
            if place == "shard" and n == 1:
                continue
            need = per_rank(c, n, place)
            left = [(m - CONTEXT_GB) * (1 - FRAGMENTATION) - need / GB for m in CARDS_GB]
            extra = f" (+ {2 * c['vlm'] / GB:.1f} GB on the reward card)" if place == "dedicated" else ""
            line = (f"{n}  {place or '-':9s} | {need / GB:6.1f} GB{extra} | "
                    + " / ".join(f"{v:6.1f}" for v in left))
            if act:
                train_need = need + act[0] + (act[1] if place != "dedicated" else 0)
                verdicts = []
                for m in CARDS_GB:
                    v = _verdict(train_need, m)
                    if place == "dedicated":
                        v += "; " + _verdict(2 * c["vlm"] + act[1], m)
                    verdicts.append(f"{m}: {v}")
                line += " | " + ", ".join(verdicts)
            print(line)

if __name__ == "__main__":
    main()
