"""Sample pairs of edits for people to judge: ``python -m alignprop.sample_pairs``.

    python -m alignprop.sample_pairs --pretrained_model tiny-photo --data_dir photos/ \\
        --prompt "Make it brighter." --num_pairs 40 --sde_noise 0.7 --output_dir pairs/

Writes a pairs folder (alignprop/pairs_format.py): for pair ``i`` the input photo (resized
as training sees it), two edits of it under the same instruction and their stored SDE
trajectories, then ``pairs.json`` last. ``python -m alignprop.annotate pairs/`` shows them
to people; ``alignprop_fluxkontext.py --method d3po --preferences pairs/preferences.jsonl``
trains on exactly these trajectories (with the same --pretrained_model, --sample_num_steps,
--image_height/--image_width and --guidance_scale).

Pair ``i`` edits image ``i mod n`` of --data_dir (sorted by name) with its instruction
(--prompt, or --prompt_file as in training). Its two samples start from one initial noise
and differ by the noise of Flow-GRPO's SDE steps at --sde_noise, as D3PO samples its pairs;
every seed is a function of (--seed, pair), so the same command writes the same pairs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from common.cli import UserError, finite_float, positive_int, run_cli
from common.hub import resolve_device_dtype
from common.images import save_image
from common.paths import check_outputs_spare_inputs, check_writable_dir

from .config import DEFAULT_PROMPT
from .data import ImageFolder, seed_for
from .models import DEFAULT_MODEL, load_kontext_pipeline
from .pairs_format import MANIFEST, pair_files, write_pairs
from .sampler import KontextSampler, encode_prompts, stack_prompt_embeds

PROG = "python -m alignprop.sample_pairs"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data_dir", required=True,
                    help="Folder of input images (as --data_dir of training).")
    ap.add_argument("--output_dir", required=True,
                    help="New pairs folder (refused if it already holds a pairs.json).")
    ap.add_argument("--pretrained_model", default=DEFAULT_MODEL,
                    help="Kontext pipeline: hub id, local diffusers folder, 'tiny' or "
                         "'tiny-photo' (train with the same one).")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="Edit instruction of every pair.")
    ap.add_argument("--prompt_file", default=None,
                    help="Instructions per image or drawn per pair, as training's --prompt_file.")
    ap.add_argument("--num_pairs", type=positive_int, default=40, help="Pairs to sample.")
    ap.add_argument("--sde_noise", type=finite_float, default=0.7,
                    help="Noise level a of the SDE sampler (> 0; train with D3PO on the same "
                         "trajectories).")
    ap.add_argument("--image_height", type=positive_int, default=512,
                    help="Size the inputs are resized to (a multiple of 16; as in training).")
    ap.add_argument("--image_width", type=positive_int, default=512)
    ap.add_argument("--sample_num_steps", type=positive_int, default=28,
                    help="Sampler steps (train with the same --sample_num_steps).")
    ap.add_argument("--guidance_scale", type=finite_float, default=2.5,
                    help="Embedded guidance (train with the same value).")
    ap.add_argument("--max_sequence_length", type=positive_int, default=512,
                    help="T5 tokens of the instruction's embedding (as training's flag).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of every pair's noise.")
    ap.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda:1'")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="Weights dtype; 'auto' = bfloat16 on CUDA, float32 on CPU.")
    return ap


def check_args(args: argparse.Namespace) -> None:
    """Every refusal before a model loads (one line each)."""
    if not args.sde_noise > 0:
        raise UserError(f"--sde_noise must be > 0 (D3PO needs the steps' log-probabilities), "
                        f"got {args.sde_noise}")
    for flag in ("image_height", "image_width"):
        if getattr(args, flag) % 16:
            raise UserError(f"--{flag} must be a multiple of 16, got {getattr(args, flag)}")
    if args.max_sequence_length > 512:
        raise UserError(f"--max_sequence_length must be <= 512, got {args.max_sequence_length}")
    if not args.prompt.strip():
        raise UserError("--prompt must not be empty")
    if args.prompt_file is not None and not Path(args.prompt_file).expanduser().is_file():
        raise UserError(f"--prompt_file: file not found: {args.prompt_file}")
    out = Path(args.output_dir).expanduser()
    if (out / MANIFEST).exists():
        raise UserError(f"--output_dir {out} already holds {MANIFEST}; write new pairs to a new "
                        f"folder (choices recorded on the old ones stay valid there)")
    check_outputs_spare_inputs({"--output_dir": args.output_dir}, {"--data_dir": args.data_dir})


def sample_pairs(args: argparse.Namespace, log=print):
    """Write the pairs folder of ``args``; returns the loaded manifest."""
    check_args(args)
    folder = ImageFolder(args.data_dir, args.image_height, args.image_width, args.prompt,
                         args.prompt_file, seed=args.seed)
    out = check_writable_dir("--output_dir", args.output_dir)
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    pipe = load_kontext_pipeline(args.pretrained_model, dtype=dtype)
    pipe.to(device)
    prompts = [folder.prompt_for(i % len(folder), i) for i in range(args.num_pairs)]
    text_cache = encode_prompts(pipe, prompts, device, args.max_sequence_length)
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             args.image_height, args.image_width, args.sample_num_steps,
                             args.guidance_scale, dtype=dtype)
    pairs, t0 = [], time.perf_counter()
    for i in range(args.num_pairs):
        pid = f"{i:04d}"
        files = pair_files(pid)
        image, _ = folder.load_or_substitute(i % len(folder))
        x = image[None].to(device)
        text = stack_prompt_embeds(text_cache, [prompts[i]] * 2)
        start = sampler.initial_noise(1, torch.Generator().manual_seed(
            seed_for(args.seed, "pair-x0", i)), device).expand(2, -1, -1)
        with torch.no_grad():
            edits, traj = sampler.sample_sde(
                x.expand(2, -1, -1, -1), text, args.sde_noise,
                [seed_for(args.seed, "pair", i, k) for k in (0, 1)],
                prompts=[prompts[i]] * 2, initial_noise=start)
        for rel, img in zip([files["input"], *files["images"]], [image, edits[0], edits[1]]):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            save_image(img.float().cpu(), out / rel)
        (out / files["trajectory"]).parent.mkdir(parents=True, exist_ok=True)
        traj.save(out / files["trajectory"])
        pairs.append({"id": pid, "prompt": prompts[i], **files})
        if (i + 1) % 10 == 0 or i + 1 == args.num_pairs:
            log(f"{i + 1}/{args.num_pairs} pairs ({time.perf_counter() - t0:.1f} s)")
    manifest = write_pairs(out, pairs, base_model=args.pretrained_model, lora=None,
                           sde_noise=float(args.sde_noise), num_steps=args.sample_num_steps,
                           height=args.image_height, width=args.image_width, seed=args.seed)
    log(f"wrote {len(pairs)} pairs to {out}; next: python -m alignprop.annotate {out}")
    return manifest


def _main(argv: Sequence[str] | None) -> int:
    sample_pairs(_parser().parse_args(argv))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
