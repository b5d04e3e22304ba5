"""Apply a Kontext LoRA to a folder of images: ``python -m alignprop.generate``.

Example::

    python -m alignprop.generate --input_dir photos/ --output_dir out/ \\
        --lora outputs/run1 --prompt "make it a watercolour" --lora_scale 1.0

writes ``out/<name>.png`` (LoRA), ``out/base/<name>.png`` (same seed, LoRA off; ``<name>``
keeps the input's sub-folder: ``--input_dir`` is searched recursively unless
``--no-recursive``),
``out/contact_sheet.html`` / ``.png`` (input | base | LoRA) and
``out/generate_log.json`` (settings, skipped files). Works with the LoRA
directory written by training or any diffusers-format FLUX Kontext LoRA (a
folder or a ``.safetensors`` file), and with ``--pretrained_model tiny`` on a CPU.

Resolution: every input is resized, aspect ratio kept (scale, then a centre crop
of at most a few pixels), to sides that are multiples of 16 (the FLUX VAE's 8x
downsampling times the 2x2 patchify). Inputs are only shrunk, to fit
``--max_area`` and ``--max_side``, unless ``--upscale`` lets small ones grow.

Seeds: image ``i`` with seed ``s`` gets its own ``torch.Generator(s)`` on the
CPU, so its noise does not depend on the batch it lands in, on the device, or
on whether the LoRA is on: base and LoRA outputs share their noise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from alignprop.contact_sheet import write_html, write_png
from alignprop.estimate import estimate_generate
from alignprop.models import DEFAULT_MODEL, TINY, TINY_PHOTO, load_kontext_pipeline
from alignprop.lora import load_lora, resolve_lora
from alignprop.prompts import prompt_for, read_prompt_file
from common.cli import UserError, run_cli
from common.hub import resolve_device_dtype
from common.images import (ImageLoadError, folder_counts, list_images, load_image,
                           relative_name, resize_to, save_image, unsupported_note)
from common.original_flags import record_given, resolve_source
from common.checks import check_paths
from common.paths import (check_distinct, check_no_overwrite, check_outputs_spare_inputs,
                          check_writable_dir)

MULTIPLE = 16  # FLUX: VAE downsamples 8x, the transformer patchifies 2x2



# --------------------------------------------------------------------------- resolution
def target_size(height: int, width: int, max_area: int | None = 1024 * 1024,
                max_side: int | None = None, upscale: bool = False,
                multiple: int = MULTIPLE) -> tuple[int, int]:
    """Output (height, width): aspect kept, both sides multiples of ``multiple``.

    The scale is the largest that fits ``max_area`` (pixels) and ``max_side``
    (longest side), capped at 1 unless ``upscale``. Sides are rounded to the
    nearest multiple (never below one multiple), then rounded down where the
    rounding broke a limit.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = math.inf if upscale else 1.0
    if max_area:
        scale = min(scale, math.sqrt(max_area / (height * width)))
    if max_side:
        scale = min(scale, max_side / max(height, width))
    if not math.isfinite(scale):  # upscale with no limit: keep the size
        scale = 1.0
    h = max(multiple, round(height * scale / multiple) * multiple)
    w = max(multiple, round(width * scale / multiple) * multiple)
    too_big = (max_area and h * w > max_area) or (max_side and max(h, w) > max_side)
    if too_big:
        h = max(multiple, int(height * scale // multiple) * multiple)
        w = max(multiple, int(width * scale // multiple) * multiple)
    return h, w


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) after EXIF rotation, read from the header only (cheap)."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # malformed EXIF: load_image will decide later
            orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


# --------------------------------------------------------------------------- prompts
def read_prompts(prompt: str | None, prompt_file: str | None,
                 names: Sequence[str], seed: int = 0) -> dict[str, str]:
    """Prompt per input file name; ``--prompt_file`` means what it means in training.

    A text file holds one instruction per line (each input draws one, reproducibly
    from ``seed``); a ``.json`` object maps file names or stems to instructions and
    names it lacks use ``--prompt``. See :mod:`alignprop.prompts`.
    """
    if prompt is not None and not prompt.strip():
        raise UserError("--prompt is empty")
    if prompt_file is None:
        if prompt is None:
            raise UserError("give the edit instruction with --prompt or --prompt_file")
        return {n: prompt for n in names}
    prompts = read_prompt_file(prompt_file)
    if isinstance(prompts, list) and prompt is not None:
        raise UserError("give --prompt or a text --prompt_file (one instruction per line), not "
                        "both; a .json --prompt_file may be combined with a default --prompt")
    out, missing = {}, []
    for i, n in enumerate(names):
        p = prompt_for(prompts, prompt, n, seed, i)
        if p is None or not p.strip():
            missing.append(n)
        else:
            out[n] = p
    if missing:
        raise UserError(f"--prompt_file {prompt_file} has no prompt for {len(missing)} input(s) "
                        f"(e.g. {', '.join(missing[:3])}); add them or give a default with --prompt")
    return out


# --------------------------------------------------------------------------- generation
@dataclass
class Job:
    path: Path
    name: str           # output stem: the input's stem, under its sub-folder ("sub/cat")
    size: tuple[int, int]  # target (H, W)


def output_stem(path: Path, root: Path | None) -> str:
    """The input's stem under its sub-folder of ``root`` ("sub/cat"), or its stem."""
    return Path(relative_name(path, root)).with_suffix("").as_posix() if root else path.stem


def plan_jobs(paths: Sequence[Path], args, root: Path | None = None
              ) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Target size for every readable input; unreadable headers are skipped and reported."""
    jobs, skipped = [], []
    for p in paths:
        try:
            h, w = image_size(p)
        except Exception as exc:  # PIL raises many types for broken files
            skipped.append((p, f"cannot read image: {type(exc).__name__}: {exc}"))
            continue
        jobs.append(Job(p, output_stem(p, root),
                        target_size(h, w, args.max_area, args.max_side, args.upscale)))
    return jobs, skipped


def batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Group jobs of the same target size (the pipeline needs one size per call)."""
    groups: dict[tuple[int, int], list[Job]] = defaultdict(list)
    for j in jobs:
        groups[j.size].append(j)
    out = []
    for group in groups.values():
        out += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return out


def output_name(stem: str, seed: int, num_seeds: int, ext: str) -> str:
    return f"{stem}_seed{seed}{ext}" if num_seeds > 1 else f"{stem}{ext}"


@torch.no_grad()
def run_pipeline(pipe, images: torch.Tensor, prompts: list[str], seeds: list[int], args) -> torch.Tensor:
    """One pipeline call at the images' own size; returns (B,3,H,W) in [0,1] on the CPU."""
    h, w = images.shape[-2:]
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = pipe(image=images, prompt=prompts, height=h, width=w, max_area=h * w, _auto_resize=False,
               num_inference_steps=args.num_steps, guidance_scale=args.guidance_scale,
               generator=generators, output_type="pt",
               max_sequence_length=args.max_sequence_length).images
    return out.float().clamp(0, 1).cpu()


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m alignprop.generate",
        description="Apply a FLUX Kontext LoRA to every image of a folder and write the outputs "
                    "under the inputs' names, plus base-model outputs and a contact sheet.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--input_dir", required=True, help="Folder of input images (jpg, png, webp, "
                    "bmp, tif); unreadable files are reported and skipped.")
    io.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                    help="Search --input_dir's sub-folders too (as training does); outputs keep "
                    "the sub-folder (OUTPUT_DIR/sub/cat.png), the images found per sub-folder "
                    "are printed. --no-recursive: the top level only.")
    io.add_argument("--output_dir", required=True, help="Where outputs go (not --input_dir: no "
                    "command writes over its inputs): <name>.png per input "
                    "(LoRA, or the base model when no --lora), base/ for base outputs, "
                    "contact_sheet.html/.png and generate_log.json.")
    io.add_argument("--base_dir", default=None, help="Folder for the base-model outputs "
                    "(default: OUTPUT_DIR/base).")
    io.add_argument("--prompt", default=None, help="Edit instruction applied to every image.")
    io.add_argument("--prompt_file", default=None, help="As in training: a text file with one "
                    "instruction per line (each image draws one, reproducibly from --seed), or a "
                    ".json object {file name or stem: prompt} for per-image prompts (names it "
                    "lacks use --prompt).")
    io.add_argument("--output_format", default="png", choices=["png", "jpg", "webp", "same"],
                    help="File type of the outputs; 'same' keeps each input's extension.")
    io.add_argument("--contact_sheet", default="html,png",
                    help="Contact sheet formats, comma-separated from html,png; 'none' for none.")
    io.add_argument("--contact_sheet_rows", type=int, default=64,
                    help="At most this many rows in the PNG contact sheet (the HTML has all).")
    model = p.add_argument_group("model")
    model.add_argument("--pretrained_model", default=DEFAULT_MODEL, help="FLUX Kontext pipeline: "
                       "hub id, local diffusers folder, 'tiny' (built-in random test model) or "
                       "'tiny-photo' (built-in tiny model pretrained on photos).")
    model.add_argument("--revision", default=None, help="Hub revision of --pretrained_model.")
    model.add_argument("--variant", default=None, help="Weight variant of --pretrained_model "
                       "(e.g. fp16).")
    model.add_argument("--lora", default=None, help="LoRA to apply: a training output folder, a "
                       "folder with one .safetensors, a .safetensors file, or a hub repo id. "
                       "Without it only the base model runs.")
    model.add_argument("--lora_scale", type=float, default=1.0,
                       help="LoRA strength; 0 reproduces the base model exactly.")
    model.add_argument("--device", default="auto", help="'auto' (cuda if available), cpu, cuda, "
                       "cuda:1 ...")
    model.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU.")
    model.add_argument("--cpu_offload", action="store_true", help="Keep idle components on the "
                       "CPU (diffusers model CPU offload) to fit a small GPU.")
    gen = p.add_argument_group("sampling")
    gen.add_argument("--seed", type=int, default=0, help="Seed of the initial noise (per image, "
                     "independent of batching).")
    gen.add_argument("--num_seeds", type=int, default=1, help="Outputs per input with seeds "
                     "seed..seed+N-1, written as <name>_seed<s>.png (for diversity).")
    gen.add_argument("--num_steps", type=int, default=28, help="Sampling (Euler) steps.")
    gen.add_argument("--guidance_scale", type=float, default=2.5,
                     help="Distilled guidance of FLUX Kontext (2.5 is its usual value).")
    gen.add_argument("--max_sequence_length", type=int, default=512,
                     help="T5 prompt tokens (at most 512).")
    gen.add_argument("--max_area", type=int, default=1024 * 1024, help="Largest output area in "
                     "pixels; bigger inputs are shrunk (aspect kept). 0 = no limit.")
    gen.add_argument("--max_side", type=int, default=0, help="Largest output side in pixels; "
                     "0 = no limit.")
    gen.add_argument("--upscale", action="store_true", help="Let inputs smaller than the limits "
                     "grow to --max_area / --max_side (default: only shrink).")
    gen.add_argument("--batch_size", type=int, default=1, help="Images per pipeline call "
                     "(images of the same output size are batched together).")
    gen.add_argument("--no_base", action="store_true", help="Skip the base-model outputs (the "
                     "contact sheet then shows input | LoRA).")
    p.add_argument("--estimate", action="store_true", help="Do not generate: build the pipeline "
                   "at its real size without weights and trace one call at the largest output "
                   "size of --input_dir; print parameters, FLOPs, time per call at 40%% of GPU "
                   "peaks and peak memory per GPU size (docs/scale.md). Nothing is written.")
    return p


def estimate(args, jobs) -> int:
    """``--estimate``: one traced pipeline call at the largest planned size (no weights)."""
    if not jobs:
        raise UserError(f"--input_dir {args.input_dir}: no readable image to size the estimate")
    h, w = max((j.size for j in jobs), key=lambda s: s[0] * s[1])
    dtype = {"float32": torch.float32, "float16": torch.float16}.get(args.dtype, torch.bfloat16)
    est = estimate_generate(args.pretrained_model, h, w, args.num_steps, args.batch_size, dtype,
                            args.max_sequence_length, args.guidance_scale)
    print(est.report())
    return 0


def validate(args) -> list[str]:
    """Refuse bad values (UserError); return the contact-sheet formats."""
    for name, lo in (("num_steps", 1), ("batch_size", 1), ("num_seeds", 1),
                     ("contact_sheet_rows", 1), ("max_sequence_length", 1)):
        if getattr(args, name) < lo:
            raise UserError(f"--{name} must be >= {lo}, got {getattr(args, name)}")
    if args.max_sequence_length > 512:
        raise UserError(f"--max_sequence_length must be <= 512, got {args.max_sequence_length}")
    for name in ("max_area", "max_side"):
        v = getattr(args, name)
        if v < 0 or 0 < v < (MULTIPLE * MULTIPLE if name == "max_area" else MULTIPLE):
            raise UserError(f"--{name} must be 0 (no limit) or at least "
                            f"{MULTIPLE * MULTIPLE if name == 'max_area' else MULTIPLE}, got {v}")
    if not math.isfinite(args.lora_scale) or not math.isfinite(args.guidance_scale):
        raise UserError("--lora_scale and --guidance_scale must be finite numbers")
    if args.guidance_scale < 0:
        raise UserError(f"--guidance_scale must be >= 0, got {args.guidance_scale}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    sheets = [s.strip().lower() for s in args.contact_sheet.split(",") if s.strip()]
    if sheets == ["none"]:
        sheets = []
    bad = sorted(set(sheets) - {"html", "png"})
    if bad:
        raise UserError(f"--contact_sheet: unknown format(s) {bad}; use html, png, html,png or none")
    if args.device != "auto":
        try:
            torch.device(args.device)
        except RuntimeError:
            raise UserError(f"--device {args.device!r} is not a torch device") from None
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    return sheets


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm.auto import tqdm

    parser = build_parser()
    given = record_given(parser)
    args = parser.parse_args(argv)
    resolve_source(given)   # --recursive beside --no-recursive: one line (the one rule)
    sheets = validate(args)
    # every path a flag names, before any model loads (one line naming the flag)
    check_paths([("--input_dir", "dir", args.input_dir),
                 ("--prompt_file", "file", args.prompt_file), ("--lora", "path", args.lora),
                 ("--pretrained_model", "model", args.pretrained_model)], names=(TINY, TINY_PHOTO))
    out_dir = Path(args.output_dir).expanduser()
    base_dir = Path(args.base_dir).expanduser() if args.base_dir else out_dir / "base"
    use_lora = args.lora is not None
    want_base = not use_lora or not args.no_base
    if use_lora:
        resolve_lora(args.lora)  # fail on a bad path before the (slow) model load

    # this command's own outputs inside --input_dir are never its inputs
    root = Path(args.input_dir).expanduser()
    paths = list_images(root, recursive=args.recursive, exclude=(out_dir, base_dir))
    if not paths:
        where = " or its sub-folders" if args.recursive else ""
        raise UserError(f"--input_dir {args.input_dir}{where} holds no images (.jpg .jpeg .png "
                        f".webp .bmp .tif .tiff){unsupported_note(root, args.recursive)}")
    names = {p: relative_name(p, root) for p in paths}   # "sub/cat.png": nothing collides
    ext_of = {p: (p.suffix.lower() if args.output_format == "same" else "." + args.output_format)
              for p in paths}
    stems = defaultdict(list)
    for p in paths:
        stems[output_stem(p, root) + ext_of[p]].append(names[p])
    clash = [v for v in stems.values() if len(v) > 1]
    if clash:
        raise UserError(f"inputs {', '.join(clash[0])} would write the same output name; rename "
                        "them or use --output_format same")
    # Never write over (or among) the inputs, and find an unwritable folder before the
    # model loads: every file this command writes is known from the input names.
    check_outputs_spare_inputs({"--output_dir": out_dir, "--base_dir": base_dir},
                               {"--input_dir": args.input_dir})
    if want_base and use_lora and out_dir.resolve() == base_dir.resolve():
        raise UserError(f"--base_dir {base_dir} is --output_dir: base and LoRA outputs would "
                        "overwrite each other; choose another --base_dir")
    folders = [out_dir] + ([base_dir] if use_lora and want_base else [])
    out_flag = "--output_dir" if len(folders) == 1 else "--output_dir/--base_dir"
    planned = [(out_dir / f"contact_sheet.{kind}", f"the {kind} contact sheet")
               for kind in sheets] + [(out_dir / "generate_log.json", "the run log")]
    planned += [(f / output_name(output_stem(p, root), args.seed + k, args.num_seeds, ext_of[p]),
                 f"the output of input {names[p]}")
                for f in folders for p in paths for k in range(args.num_seeds)]
    # an input named contact_sheet.png must not have its output replaced by the sheet
    check_distinct(planned, out_flag)
    check_no_overwrite([path for path, _ in planned], paths, out_flag)
    prompts = read_prompts(args.prompt, args.prompt_file, [names[p] for p in paths], args.seed)
    jobs, skipped = plan_jobs(paths, args, root)
    if args.estimate:  # a dry run writes nothing, so it needs no output folder
        return estimate(args, jobs)
    for flag, f in zip(("--output_dir", "--base_dir"), folders):
        check_writable_dir(flag, f)
    counts = folder_counts(paths, root) if args.recursive else None
    if counts:
        print(f"--input_dir: {counts}", file=sys.stderr)

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    t0 = time.time()
    pipe = load_kontext_pipeline(args.pretrained_model, dtype=dtype, revision=args.revision,
                                 variant=args.variant)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)  # our own bar counts images
    n_layers = load_lora(pipe, args.lora, args.lora_scale) if use_lora else 0
    load_s = time.time() - t0

    seeds = [args.seed + k for k in range(args.num_seeds)]
    # (column title, folder, use the LoRA?) for each generated set
    sets = []
    if use_lora and want_base:
        sets.append(("base", base_dir, False))
    sets.append(("LoRA" if use_lora else "output", out_dir, use_lora))
    written: dict[tuple[str, int, str], Path] = {}
    total = len(jobs) * len(seeds) * len(sets)
    t1 = time.time()
    with tqdm(total=total, desc="generate", unit="img", disable=None) as bar:
        for batch in batches(jobs, args.batch_size):
            h, w = batch[0].size
            images, ok = [], []
            for job in batch:
                try:
                    images.append(resize_to(load_image(job.path), h, w, mode="crop"))
                    ok.append(job)
                except ImageLoadError as exc:
                    skipped.append((job.path, str(exc)))
                    bar.update(len(seeds) * len(sets))
            if not ok:
                continue
            x = torch.stack(images).to(device=device, dtype=dtype)
            batch_prompts = [prompts[names[j.path]] for j in ok]
            for title, folder, lora_on in sets:
                if use_lora:
                    (pipe.enable_lora if lora_on else pipe.disable_lora)()
                for s in seeds:
                    y = run_pipeline(pipe, x, batch_prompts, [s] * len(ok), args)
                    for job, img in zip(ok, y):
                        dst = folder / output_name(job.name, s, args.num_seeds, ext_of[job.path])
                        save_image(img, dst)
                        written[(title, s, names[job.path])] = dst
                    bar.update(len(ok))
    gen_s = time.time() - t1
    if use_lora:
        pipe.enable_lora()

    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    done = sorted({name for (_, _, name) in written})
    if not done:
        raise UserError(f"no image of {args.input_dir} could be read ({len(skipped)} skipped)")

    by_name = {names[j.path]: j.path for j in jobs}
    columns = ["input"] + [f"{t} seed {s}" if len(seeds) > 1 else t for s in seeds for t, _, _ in sets]
    rows = [(n, [by_name[n]] + [written.get((t, s, n)) for s in seeds for t, _, _ in sets])
            for n in done]
    note = (f"prompt: {args.prompt or args.prompt_file} | model: {args.pretrained_model} | "
            f"LoRA: {args.lora} (scale {args.lora_scale}) | steps {args.num_steps}, "
            f"guidance {args.guidance_scale}, seed(s) {seeds}")
    if "html" in sheets:
        write_html(out_dir / "contact_sheet.html", columns, rows, "alignprop.generate", [note])
    if "png" in sheets:
        write_png(out_dir / "contact_sheet.png", columns, rows, max_rows=args.contact_sheet_rows)
    log = {"args": vars(args), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
           "lora_layers": n_layers, "generated": len(written), "inputs": len(done),
           "skipped": [{"file": str(p), "reason": r} for p, r in skipped],
           "seconds": {"load": round(load_s, 2), "generate": round(gen_s, 2)},
           "outputs": {f"{t}/seed{s}/{n}": str(p) for (t, s, n), p in sorted(written.items())}}
    (out_dir / "generate_log.json").write_text(json.dumps(log, indent=2))
    print(f"wrote {len(written)} image(s) for {len(done)} input(s) to {out_dir} "
          f"({gen_s:.1f}s); {len(skipped)} skipped", file=sys.stderr)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv, "alignprop.generate")


if __name__ == "__main__":
    sys.exit(cli())
