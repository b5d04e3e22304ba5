#!/usr/bin/env python
"""Score images with a promptable InternVL reward (the same code the trainer backpropagates).

Examples::

    python internvl_scorer.py photo.jpg folder/ --task single --print_probs
    python internvl_scorer.py a.jpg b.jpg --task pair               # P(a is better than b)
    python internvl_scorer.py out/ --task similarity --reference style.jpg
    python internvl_scorer.py ref.jpg a.jpg b.jpg --task triplet    # is a closer to ref than b?
    python internvl_scorer.py x.png --model_id tiny --viz_grads heat/   # offline demo
    python internvl_scorer.py x.png --prompt studio --print_layer_probs  # a preset; layer trace
    python internvl_scorer.py x.png --task artifact --artifact_ref1 g1.png --artifact_ref2 g2.png
    python internvl_scorer.py --list_prompts

Images are taken in the order given (folders expand to their sorted image files) and grouped by
the task: 1 per sample for single/sharpness/artifact (and similarity/content-similarity with
--reference), 2 for pair/similarity/content-similarity (and triplet with --reference), 3 for
triplet (reference, candidate A, candidate B). User errors exit with code 2 and one message.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

from rewards.cli import UserError  # printed as one line, exit code 2

# our dtype names and the original scorer's spellings
DTYPES = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
          "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TASK_HELP = ("single: rate each image 0..9; sharpness; artifact (9 = clean); similarity: style of "
             "two images (or each image vs --reference); content-similarity: same subject/identity; "
             "pair: P(first better than second), debiased over both orders; triplet: P(candidate A "
             "closer in style to the reference than B)")


def build_parser() -> argparse.ArgumentParser:
    from rewards.internvl_model import DEFAULT_MODEL_ID
    from rewards.vlm import CALIBRATIONS, OBJECTIVES, TASKS

    p = argparse.ArgumentParser(
        prog="internvl_scorer.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("paths", nargs="*", help="image files and/or folders (sorted image files)")
    p.add_argument("--list_prompts", action="store_true",
                   help="list the named prompt presets (give a name to --prompt) and exit")
    p.add_argument("--task", default="single", choices=TASKS, help=TASK_HELP)
    p.add_argument("--reference", default=None,
                   help="reference image: style reference for similarity/triplet (then images are "
                        "grouped without it); content reference for content-similarity")
    p.add_argument("--model_id", default=DEFAULT_MODEL_ID,
                   help="VLM checkpoint (hub id or local dir) of a supported family: InternVL3 "
                        "(-hf format), Qwen2.5-VL or Qwen3-VL, read from its config.json; or a "
                        "built-in random tiny model for offline demos: 'tiny' (InternVL), "
                        "'tiny-qwen2.5-vl', 'tiny-qwen3-vl'")
    p.add_argument("--dtype", default="auto", choices=list(DTYPES),
                   help="model dtype (fp32/fp16/bf16 are the original's spellings); auto = "
                        "bfloat16 on GPU, float32 on CPU")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cuda, cuda:1, cpu ...")
    p.add_argument("--prompt", default=None,
                   help="replace the task's built-in question, or a preset's name (studio, "
                        "eyes_skin, photoshoot, same_subject, ...; see --list_prompts)")
    p.add_argument("--prompt_file", default=None,
                   help=".txt (the question) or .json/.yaml with prompt, answer_scale, answer_prefix")
    p.add_argument("--answer_scale", default=None,
                   help="digits | qalign | yesno | 'word=value,...' | 'worst,...,best' "
                        "(pair/triplet: two answers, higher value = first compared image wins)")
    p.add_argument("--objective", default="expected", choices=OBJECTIVES,
                   help="expected: expected answer value in [0,1]; margin: sigmoid(l_best - l_worst)")
    p.add_argument("--calibration", default="none", choices=CALIBRATIONS,
                   help="pmi_null subtracts the log-probs of a neutral gray image (cached)")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the answer log-probs (> 0)")
    p.add_argument("--entropy_bonus", type=float, default=0.0,
                   help="adds bonus * normalised entropy of the answer distribution")
    p.add_argument("--max_tiles", type=int, default=1,
                   help="InternVL: 1 = one tile per image; >1 = dynamic tiling (more tokens)")
    p.add_argument("--min_pixels", type=int, default=None,
                   help="Qwen-VL: smallest image area after its dynamic resize (default: the "
                        "checkpoint's processor's)")
    p.add_argument("--max_pixels", type=int, default=None,
                   help="Qwen-VL: largest image area after its dynamic resize; fewer pixels = "
                        "fewer image tokens (default: the checkpoint's processor's)")
    p.add_argument("--batch_size", type=int, default=8, help="samples per model forward (>= 1)")
    p.add_argument("--margin_temp", type=float, default=1.0,
                   help="margin objective: sigmoid(margin / margin_temp) (> 0)")
    p.add_argument("--artifact_ref1", default=None,
                   help="task artifact: first example image of the artifact, shown before each "
                        "rated image (with --artifact_ref2)")
    p.add_argument("--artifact_ref2", default=None, help="task artifact: second example image")
    t = p.add_argument_group("layer tracing (the answer read through the LM head at every layer)")
    t.add_argument("--trace_layers", action="store_true",
                   help="add, per sample, the first layer whose answer is the final answer "
                        "(columns layers, answer_from_layer)")
    t.add_argument("--print_layer_logprobs", action="store_true",
                   help="print per sample a table of the answer log-probs after every layer, "
                        "with their mean change to the final layer (implies --trace_layers)")
    t.add_argument("--print_layer_probs", action="store_true",
                   help="print per sample a table of the answer probabilities after every layer, "
                        "argmax and mean |p - p_final| (implies --trace_layers)")
    p.add_argument("--print_probs", action="store_true",
                   help="also print the answer probabilities (per order for pair/triplet)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"], help="output format")
    v = p.add_argument_group("gradient pictures (where the score is sensitive)")
    v.add_argument("--viz_grads", nargs="?", const=True, default=None, metavar="DIR",
                   help="write, per scored image, <name>_input.png, <name>_grad.png (|d score / "
                        "d pixel|) and <name>_overlay.png into --viz_outdir (or DIR)")
    v.add_argument("--viz_outdir", default="debug_images", help="folder of the gradient pictures")
    v.add_argument("--viz_alpha", type=float, default=0.6,
                   help="overlay strength of the gradient (red) over the image, in [0, 1]")
    v.add_argument("--viz_norm", default="percentile", choices=["percentile", "log", "max"],
                   help="gradient scaling: percentile (--viz_pmin..--viz_pmax -> 0..1), log "
                        "(log1p(a g / max) / log1p(a), a = --viz_log_alpha) or max")
    v.add_argument("--viz_pmin", type=float, default=2.0, help="lower percentile (percentile norm)")
    v.add_argument("--viz_pmax", type=float, default=98.0, help="upper percentile (percentile norm)")
    v.add_argument("--viz_log_alpha", type=float, default=10.0, help="a of the log norm (> 0)")
    v.add_argument("--viz_blur", type=float, default=0.0,
                   help="Gaussian blur (sigma, px) of the gradient map before scaling; 0 = none")
    p.add_argument("--trust_remote_code", action="store_true",
                   help="allow custom code from the checkpoint (only if you trust it)")
    from rewards.original_flags import add_original_flags

    add_original_flags(p, "scorer")  # --entropy_coef under its old name
    return p


# Most pixels loaded for one batch (16 MP: 192 MB as float32 RGB); larger photos go alone.
BATCH_PIXELS = 16 * 1024 * 1024


def pixel_count(path: Path) -> int:
    """Width x height from the image header (0 if unreadable: loading will report it)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size[0] * img.size[1]
    except Exception:  # PIL raises many types for broken files; load_image names the problem
        return 0


def expand_paths(paths: list[str]) -> list[Path]:
    from rewards.images import IMAGE_EXTENSIONS, list_images, unsupported_note

    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise UserError(f"folder {path} contains no images ({', '.join(IMAGE_EXTENSIONS)})"
                                f"{unsupported_note(path)}")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"no such file or folder: {path}")
    return files


def group_size(task: str, has_reference: bool) -> int:
    from rewards.vlm_prompts import TASK_IMAGES

    n = TASK_IMAGES[task]
    return n - 1 if has_reference else n


def group_files(files: list[Path], task: str, has_reference: bool) -> list[list[Path]]:
    g = group_size(task, has_reference)
    if len(files) % g:
        what = {1: "one image per sample", 2: "images in pairs (A B A B ...)",
                3: "images in triplets (reference A B ...)"}[g]
        hint = ""
        if task in ("similarity", "content-similarity") and not has_reference:
            hint = "; or pass --reference IMG to compare every image with one reference"
        if task == "triplet" and not has_reference:
            hint = "; or pass --reference IMG and give candidates in pairs"
        raise UserError(f"task {task!r} takes {what}; got {len(files)} image(s), which is not a "
                        f"multiple of {g}{hint}")
    return [files[i:i + g] for i in range(0, len(files), g)]


def slot_names(task: str, has_reference: bool) -> list[str]:
    if task == "triplet":
        return ["reference", "image_a", "image_b"]
    if task in ("pair", "similarity", "content-similarity"):
        return ["image_a", "image_b"]
    return ["image"]


def _gaussian_blur(m, sigma: float):
    """(H,W) map blurred with a separable Gaussian of ``sigma`` px (reflect padding)."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return m
    r = max(1, int(round(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=m.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = m[None, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x[0, 0]


def gradient_map(grad, norm: str = "percentile", pmin: float = 2.0, pmax: float = 98.0,
                 log_alpha: float = 10.0, blur: float = 0.0):
    """(3,H,W) gradient -> (H,W) in [0,1]: mean |g| over channels, blurred, then scaled."""
    import math

    import torch

    m = _gaussian_blur(grad.detach().abs().mean(0).float(), blur)
    if norm == "percentile":
        flat = m.flatten()
        lo, hi = torch.quantile(flat, pmin / 100.0), torch.quantile(flat, pmax / 100.0)
        return ((m - lo) / (hi - lo + 1e-12)).clamp(0, 1)
    m = m / (m.max() + 1e-12)
    if norm == "log":
        m = torch.log1p(log_alpha * m) / math.log1p(log_alpha)
    return m.clamp(0, 1)


def gradient_pictures(image, grad, args) -> dict:
    """{"input", "grad", "overlay"}: (3,H,W) pictures; the overlay tints sensitive pixels red."""
    g = gradient_map(grad, args.viz_norm, args.viz_pmin, args.viz_pmax, args.viz_log_alpha,
                     args.viz_blur)
    x = image.detach().float().clamp(0, 1)
    a = args.viz_alpha
    overlay = (1 - a) * x
    overlay[0] = overlay[0] + a * g
    return {"input": x, "grad": g[None].expand(3, -1, -1), "overlay": overlay.clamp(0, 1)}


def check_viz_args(args) -> Path | None:
    """The gradient-picture folder (None without --viz_grads); bad values are refused."""
    if not args.viz_grads:
        return None
    if not 0.0 <= args.viz_alpha <= 1.0:
        raise UserError(f"--viz_alpha must be in [0, 1], got {args.viz_alpha}")
    if not 0.0 <= args.viz_pmin < args.viz_pmax <= 100.0:
        raise UserError(f"--viz_pmin/--viz_pmax must satisfy 0 <= pmin < pmax <= 100, got "
                        f"{args.viz_pmin} {args.viz_pmax}")
    if not args.viz_log_alpha > 0:
        raise UserError(f"--viz_log_alpha must be > 0, got {args.viz_log_alpha}")
    if not args.viz_blur >= 0:
        raise UserError(f"--viz_blur must be >= 0, got {args.viz_blur}")
    return Path(args.viz_outdir if args.viz_grads is True else args.viz_grads)


def run(args) -> list[dict]:
    import torch

    from rewards.hub import ModelUnavailableError
    from rewards.cli import one_line
    from rewards.images import ImageLoadError, load_image
    from rewards.vlm import make_internvl_reward

    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_tiles < 1:
        raise UserError(f"--max_tiles must be >= 1, got {args.max_tiles}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature must be a positive number, got {args.temperature}")
    if args.reference and args.task not in ("similarity", "content-similarity", "triplet"):
        raise UserError(f"--reference is used by tasks similarity, content-similarity and triplet, "
                        f"not {args.task!r}")
    has_ref = bool(args.reference)
    if not args.paths:
        raise UserError("give image files or folders to score (or --list_prompts)")
    groups = group_files(expand_paths(args.paths), args.task, has_ref)
    viz = check_viz_args(args)
    if viz is not None:  # heatmaps never land among (or over) the images being scored
        from rewards.paths import check_outputs_spare_inputs, check_writable_dir

        check_outputs_spare_inputs({"--viz_grads": viz}, {
            f"the folder of input {f.name}": f.parent for g in groups for f in g})
        check_writable_dir("--viz_grads", viz)
    if not (math.isfinite(args.margin_temp) and args.margin_temp > 0):
        raise UserError(f"--margin_temp must be a positive number, got {args.margin_temp}")
    refs = [r for r in (args.artifact_ref1, args.artifact_ref2) if r]
    if refs and (len(refs) != 2 or args.task != "artifact"):
        raise UserError("--artifact_ref1 and --artifact_ref2 go together, with --task artifact")
    trace = args.trace_layers or args.print_layer_logprobs or args.print_layer_probs

    if args.device == "auto":  # the original's default: CUDA when there is one
        args.device = None
    dtype = DTYPES[args.dtype]
    if dtype == "auto":
        dtype = "bfloat16" if (torch.cuda.is_available() and args.device != "cpu") else "float32"
    try:
        reward = make_internvl_reward(
            task=args.task, model_id=args.model_id, dtype=dtype, device=args.device,
            prompt=args.prompt, prompt_file=args.prompt_file, answer_scale=args.answer_scale,
            objective=args.objective, calibration=args.calibration, temperature=args.temperature,
            entropy_bonus=args.entropy_bonus, max_tiles=args.max_tiles,
            min_pixels=args.min_pixels, max_pixels=args.max_pixels,
            trust_remote_code=args.trust_remote_code, margin_temp=args.margin_temp,
            artifact_refs=refs)
    except ModelUnavailableError as exc:  # name this command's flag, not the trainer's
        raise exc.for_cli({exc.flag: "--model_id"} if exc.flag else {}) from None
    ref = load_image(args.reference) if has_ref else None
    # which slot the fixed reference fills: similarity -> image 2, triplet -> image 1
    ref_slot = 1 if args.task in ("similarity", "content-similarity") else 0
    names = slot_names(args.task, has_ref)
    if has_ref and args.task in ("similarity", "content-similarity"):
        names = ["image", "reference"]
    words = reward.answer_scale.words

    rows: list[dict] = []
    skipped: list[tuple[Path, str]] = []
    def batches():
        """(samples, their images) at most --batch_size samples or BATCH_PIXELS pixels at a
        time. Only one batch's images are in memory (freed when the next one starts), so
        peak memory does not grow with the number of images scored. A file that cannot be
        read skips its sample, as the other commands skip it, and is listed at the end."""
        chunk, images, pixels = [], {}, 0
        for gi, files in enumerate(groups):
            size = sum(pixel_count(f) for f in files)  # from the file headers: nothing decoded
            if chunk and pixels + size > BATCH_PIXELS:
                yield chunk, images
                chunk, images, pixels = [], {}, 0
            try:
                loaded = {f: images.get(f) if f in images else load_image(f) for f in files}
            except (ImageLoadError, OSError) as exc:
                skipped.append((files[0] if len(files) == 1 else files, one_line(exc)))
                continue
            images.update(loaded)
            del loaded
            chunk.append((gi, files))
            pixels += size
            if len(chunk) >= args.batch_size or pixels >= BATCH_PIXELS:
                yield chunk, images
                chunk, images, pixels = [], {}, 0
        if chunk:
            yield chunk, images

    for chunk, cache in batches():
        def image(path: Path) -> torch.Tensor:
            return cache[path]

        # images of different sizes cannot share a batch tensor: one call per size signature
        by_shape: dict[tuple, list] = {}
        for gi, files in chunk:
            sig = tuple(tuple(image(f).shape) for f in files)
            by_shape.setdefault(sig, []).append((gi, files))
        for items in by_shape.values():
            slots = []
            for k in range(len(items[0][1])):
                x = torch.stack([image(files[k]) for _, files in items])
                slots.append(x.requires_grad_(viz is not None))
            full = list(slots)
            if ref is not None:
                full.insert(ref_slot, ref[None].expand(len(items), -1, -1, -1))
            if reward.examples:  # the artifact's two example images come first
                full = [e.expand(len(items), -1, -1, -1) for e in reward.examples] + full
            traces = reward.trace_layers(full) if trace else None
            if viz is None:
                with torch.no_grad():
                    out = reward.score_slots(full)
            else:
                out = reward.score_slots(full)
                out.scores.sum().backward()
                viz.mkdir(parents=True, exist_ok=True)
            for bi, (gi, files) in enumerate(items):
                row: dict = {}
                all_files = list(files)
                if ref is not None:
                    all_files.insert(ref_slot, Path(args.reference))
                for name, f in zip(names, all_files):
                    row[name] = str(f)
                row["score"] = float(out.scores[bi].detach())
                if args.print_probs:
                    for oi, probs in enumerate(out.probs):
                        tag = f"{out.orders[oi]} " if out.orders else ""
                        for w, pv in zip(words, probs[bi].tolist()):
                            row[f"{tag}p({w})"] = pv
                if traces is not None:
                    layers = [t[bi].tolist() for t in traces]   # per order: (L+1, K)
                    row["layers"] = len(layers[0]) - 1
                    row["answer_from_layer"] = answer_from_layer(layers[0])
                    row["_layers"] = {"orders": out.orders or [""], "logprobs": layers,
                                      "words": list(words)}
                if viz is not None:
                    from rewards.images import save_image

                    for k, (x, f) in enumerate(zip(slots, files)):
                        pics = gradient_pictures(x[bi], x.grad[bi], args)
                        for kind, pic in pics.items():
                            save_image(pic, viz / f"{gi:04d}_{k + 1}_{f.stem}_{kind}.png")
                rows.append((gi, row))
        del cache, by_shape, chunk, slots, full, out
    for what, reason in skipped:
        shown = what if isinstance(what, Path) else " ".join(map(str, what))
        print(f"skipped {shown}: {reason}", file=sys.stderr)
    if not rows:
        raise UserError(f"no sample could be scored: {len(skipped)} skipped ({skipped[0][1]})")
    if skipped:
        print(f"scored {len(rows)} sample(s); skipped {len(skipped)} with unreadable images "
              f"(listed above)", file=sys.stderr)
    return [r for _, r in sorted(rows, key=lambda t: t[0])]


def answer_from_layer(logprobs: list[list[float]]) -> int:
    """First layer from which the argmax answer stays the final layer's argmax."""
    final = max(range(len(logprobs[-1])), key=logprobs[-1].__getitem__)
    first = len(logprobs) - 1
    for li in range(len(logprobs) - 1, -1, -1):
        if max(range(len(logprobs[li])), key=logprobs[li].__getitem__) != final:
            break
        first = li
    return first


def layer_tables(row: dict, probs: bool, logprobs: bool) -> str:
    """Per-layer tables of one sample (layer 0 = embeddings, last = the final layer)."""
    import math as _m

    info = row["_layers"]
    words = info["words"]
    label = ", ".join(str(v) for k, v in row.items() if not k.startswith("_")
                      and k not in ("score", "layers", "answer_from_layer"))
    out = []
    for order, lp in zip(info["orders"], info["logprobs"]):
        tag = f" order {order}" if order else ""
        head = "  layer | " + " ".join(f"{w[:8]:>8}" for w in words)
        if logprobs:
            out.append(f"{label}{tag}: answer log-probs per layer (d = mean |lp - lp_final|)")
            out.append(head + " |        d")
            for li, v in enumerate(lp):
                d = sum(abs(a - b) for a, b in zip(v, lp[-1])) / len(v)
                out.append(f"  {li:>5} | " + " ".join(f"{x:8.3f}" for x in v) + f" | {d:8.4f}")
        if probs:
            pf = [_m.exp(x) for x in lp[-1]]
            out.append(f"{label}{tag}: answer probabilities per layer (d = mean |p - p_final|)")
            out.append(head + " |   argmax |        d")
            for li, v in enumerate(lp):
                p = [_m.exp(x) for x in v]
                arg = words[max(range(len(p)), key=p.__getitem__)]
                d = sum(abs(a - b) for a, b in zip(p, pf)) / len(p)
                out.append(f"  {li:>5} | " + " ".join(f"{x:8.3f}" for x in p)
                           + f" | {arg[:8]:>8} | {d:8.4f}")
    return "\n".join(out)


def render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{("layer_logprobs" if k == "_layers" else k): v for k, v in r.items()}
                           for r in rows], indent=2)
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    keys = list(rows[0])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cells = [[f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_prompts:
        from rewards.prompt_presets import listing

        print(listing())
        return 0
    rows = run(args)
    print(render(rows, args.format))
    if (args.print_layer_probs or args.print_layer_logprobs) and args.format != "json":
        tables = "\n\n".join(layer_tables(r, args.print_layer_probs, args.print_layer_logprobs)
                               for r in rows)
        # csv stays machine-readable on stdout: the tables go to stderr there
        print("\n" + tables, file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from rewards.cli import run_cli

    return run_cli(_main, argv, "internvl_scorer.py")


if __name__ == "__main__":
    sys.exit(main())
