"""Scoring image files with a VLM reward, and looking inside the answer.

The library behind ``internvl_scorer.py``: group files into the task's samples, score them in
memory-bounded batches (:func:`score_files`), and inspect the score -- the gradient of the score
with respect to each pixel (:func:`gradient_map`, :func:`gradient_pictures`) and the answer
read through the LM head at every layer (:func:`layer_tables`, :func:`answer_from_layer`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from common.checks import MAX_ASPECT, check_image, check_paths
from common.cli import UserError, one_line
from common.hub import ModelUnavailableError
from common.images import (IMAGE_EXTENSIONS, ImageLoadError, folder_counts, list_images,
                           load_image, save_image, unsupported_note)
from common.paths import check_outputs_spare_inputs, check_writable_dir

from .vlm import make_internvl_reward
from .vlm_named import vlm_names
from .vlm_families.qwen2_5_vl import MAX_PIXELS
from .vlm_original import load_image_original, make_original_vlm_reward
from .vlm_prompts import COMPARATIVE_TASKS, TASK_IMAGES, parse_answer_scale

# our dtype names and the original scorer's spellings
DTYPES = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
          "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

BATCH_PIXELS = 16 * 1024 * 1024


def pixel_count(path: Path) -> int:
    """Width x height from the image header (0 if unreadable: loading will report it)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size[0] * img.size[1]
    except Exception:  # PIL raises many types for broken files; load_image names the problem
        return 0


def expand_paths(paths: list[str], recursive: bool = False,
                 notes: list[str] | None = None) -> list[Path]:
    """Files of ``paths`` (folders expanded, sorted); ``notes`` collects the per-sub-folder
    counts of recursive searches (printed once the command's checks have passed)."""
    notes = [] if notes is None else notes
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = list_images(path, recursive=recursive)
            if not found:
                where = " or its sub-folders" if recursive else ""
                raise UserError(f"folder {path}{where} contains no images "
                                f"({', '.join(IMAGE_EXTENSIONS)})"
                                f"{unsupported_note(path, recursive)}")
            counts = folder_counts(found, path) if recursive else None
            if counts:
                notes.append(f"found {counts}")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"no such file or folder: {path}")
    return files


def group_size(task: str, has_reference: bool) -> int:
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


def entropy_bonus(args) -> float:
    """Our --entropy_bonus, or the original's --entropy_coef (nats) in our units: the original
    added ``coef x H`` to rating tasks only, ours adds ``bonus x H / ln K``."""
    coef = getattr(args, "original_entropy_coef", None)
    if coef is None:
        return args.entropy_bonus
    if getattr(args, "semantics", "ours") == "original":
        return coef                       # the original reward takes it as it is
    if args.task in COMPARATIVE_TASKS:
        print("internvl_scorer.py: note: --entropy_coef is ignored for pair/triplet, as in the "
              "original", file=sys.stderr)
        return 0.0
    k = len(parse_answer_scale(args.answer_scale, args.task).words)
    return coef * math.log(k)


def score_files(args) -> list[dict]:
    """Score the files of ``args.paths`` as the scorer's flags say; one row per sample.

    ``args.semantics == "original"``: the original scorer's reward
    (:mod:`rewards.vlm_original`), its file loading (every file stretched to 512 x 1024) and
    its recursive folder search."""
    original = getattr(args, "semantics", "ours") == "original"
    load = load_image_original if original else load_image
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_tiles is not None and args.max_tiles < 1:
        raise UserError(f"--max_tiles must be >= 1, got {args.max_tiles}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature must be a positive number, got {args.temperature}")
    if args.reference and args.task not in ("similarity", "content-similarity", "triplet"):
        raise UserError(f"--reference is used by tasks similarity, content-similarity and triplet, "
                        f"not {args.task!r}")
    has_ref = bool(args.reference)
    if not args.paths:
        raise UserError("give image files or folders to score (or --list_prompts)")
    recursive = getattr(args, "recursive", True)   # the original's default; --no-recursive
    notes: list[str] = []
    groups = group_files(expand_paths(args.paths, recursive, notes), args.task, has_ref)
    viz = check_viz_args(args)
    if viz is not None:  # gradient pictures never land among (or over) the images being scored
        flag = "--viz_outdir" if args.viz_grads is True else "--viz_grads"
        check_outputs_spare_inputs({flag: viz}, {
            f"the folder of input {f.name}": f.parent for g in groups for f in g})
        check_writable_dir(flag, viz)
    if not (math.isfinite(args.margin_temp) and args.margin_temp > 0):
        raise UserError(f"--margin_temp must be a positive number, got {args.margin_temp}")
    if original and getattr(args, "shift_views", 1) > 1:
        raise UserError("--shift_views is ours: the original's scorer (--semantics original) "
                        "scores each image as given")
    refs = [r for r in (args.artifact_ref1, args.artifact_ref2) if r]
    if refs and (len(refs) != 2 or args.task != "artifact"):
        raise UserError("--artifact_ref1 and --artifact_ref2 go together, with --task artifact")
    for flag in ("min_pixels", "max_pixels"):   # before a typo allocates 120 GB
        value = getattr(args, flag)
        if value is not None and not 0 < value <= MAX_PIXELS:
            raise UserError(f"--{flag} must be in [1, {MAX_PIXELS}] pixels (16384 vision tokens "
                            f"of 32x32, the largest budget of the Qwen-VL processors), got {value}")
    # every path a flag names, before the model loads (one line naming the flag); an image
    # that is one sample among many is checked when its batch is read, and skipped alone
    check_paths([("--model_id", "model", args.model_id),
                 ("--prompt_file", "file", args.prompt_file)], names=vlm_names())
    for flag, value in (("--reference", args.reference), ("--artifact_ref1", args.artifact_ref1),
                        ("--artifact_ref2", args.artifact_ref2)):
        if value:
            check_image(flag, value, max_aspect=MAX_ASPECT)
    trace = args.trace_layers or args.print_layer_logprobs or args.print_layer_probs

    if args.device == "auto":  # the original's default: CUDA when there is one
        args.device = None
    dtype = DTYPES[args.dtype]
    if dtype == "auto":
        dtype = "bfloat16" if (torch.cuda.is_available() and args.device != "cpu") else "float32"
    common = dict(task=args.task, model_id=args.model_id, dtype=dtype, device=args.device,
                  prompt=args.prompt, prompt_file=args.prompt_file,
                  answer_scale=args.answer_scale, objective=args.objective,
                  calibration=args.calibration, temperature=args.temperature,
                  entropy_bonus=entropy_bonus(args), trust_remote_code=args.trust_remote_code,
                  margin_temp=args.margin_temp, artifact_refs=refs)
    try:
        if original:
            reward = make_original_vlm_reward(**common)
        else:
            reward = make_internvl_reward(**common, max_tiles=args.max_tiles,
                                          min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                          shift_views=getattr(args, "shift_views", 1))
    except ModelUnavailableError as exc:  # name this command's flag, not the trainer's
        raise exc.for_cli({exc.flag: "--model_id"} if exc.flag else {}) from None
    args.resolved_device = str(reward.bundle.device)
    for note in notes:
        print(note, file=sys.stderr)
    ref = load(args.reference) if has_ref else None
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
                loaded = {f: images.get(f) if f in images else load(f) for f in files}
                for f, x in loaded.items():   # a size the model's processor refuses
                    try:
                        reward.check_image_size(*x.shape[-2:])
                    except ValueError as exc:
                        raise ImageLoadError(one_line(exc)) from None
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
        image = cache.__getitem__  # path -> (3,H,W) tensor of this batch

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
                row["_probs"] = [p[bi].tolist() for p in out.probs]
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
        print(f"scored {len(rows)} sample(s); skipped {len(skipped)} whose images could not be "
              f"read or used (listed above)", file=sys.stderr)
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
            pf = [math.exp(x) for x in lp[-1]]
            out.append(f"{label}{tag}: answer probabilities per layer (d = mean |p - p_final|)")
            out.append(head + " |   argmax |        d")
            for li, v in enumerate(lp):
                p = [math.exp(x) for x in v]
                arg = words[max(range(len(p)), key=p.__getitem__)]
                d = sum(abs(a - b) for a, b in zip(p, pf)) / len(p)
                out.append(f"  {li:>5} | " + " ".join(f"{x:8.3f}" for x in p)
                           + f" | {arg[:8]:>8} | {d:8.4f}")
    return "\n".join(out)


def render_original(rows: list[dict], task: str, device: str, print_probs: bool = False) -> str:
    """The original scorer's output: a header line, then ``names<TAB>score`` per sample (4
    decimals), with ``--print_probs`` its grade list or its pair_a / pair_b / pair_comb."""
    lines = [f"{len(rows)} samples | device={device} | task={task}"]
    for r in rows:
        names = ",".join(Path(r[k]).name for k in r
                         if not k.startswith("_") and k not in ("score",) and isinstance(r[k], str))
        line = f"{names}\t{r['score']:.4f}"
        if print_probs:
            probs = r["_probs"]
            if len(probs) == 1:
                line += "\tgrades:[" + ",".join(f"{v:.4f}" for v in probs[0]) + "]"
            else:
                a, b = probs
                comb = 0.5 * (a[0] + (1.0 - b[0]))
                line += (f"\tpair_a:[{a[0]:.4f},{a[1]:.4f}]\tpair_b:[{b[0]:.4f},{b[1]:.4f}]"
                         f"\tpair_comb:[{comb:.4f},{1.0 - comb:.4f}]")
        lines.append(line)
    return "\n".join(lines)


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
