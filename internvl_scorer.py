#!/usr/bin/env python
"""Score images with a promptable InternVL reward (the same code the trainer backpropagates).

Examples::

    python internvl_scorer.py photo.jpg folder/ --task single --print_probs
    python internvl_scorer.py a.jpg b.jpg --task pair               # P(a is better than b)
    python internvl_scorer.py out/ --task similarity --reference style.jpg
    python internvl_scorer.py ref.jpg a.jpg b.jpg --task triplet    # is a closer to ref than b?
    python internvl_scorer.py x.png --model_id tiny --viz_grads heat/   # offline demo
    python internvl_scorer.py x.png --model_id tiny-vlm-photo --prompt "<a question it knows>"
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
import sys

from common.cli import run_cli
from common.original_flags import (ORIGINAL_DEFAULTS, SEMANTICS, OriginalFlag, Setting,
                                   add_original_flags, record_given, resolve_source,
                                   semantics_hint, semantics_of, show)
from rewards.internvl_model import DEFAULT_MODEL_ID
from rewards.vlm_shift import views_arg
from rewards.prompt_presets import listing
from rewards.vlm import CALIBRATIONS, OBJECTIVES, TASKS
from rewards.vlm_inspect import (DTYPES, entropy_bonus, layer_tables, render, render_original,
                                 score_files)
from rewards.vlm_prompts import COMPARATIVE_TASKS

TASK_HELP = ("single: rate each image 0..9; sharpness; artifact (9 = clean); similarity: style of "
             "two images (or each image vs --reference); content-similarity: same subject/identity; "
             "pair: P(first better than second), debiased over both orders; triplet: P(candidate A "
             "closer in style to the reference than B)")


def _entropy_coef(group, flag: OriginalFlag) -> None:
    group.add_argument(flag.name, dest="original_entropy_coef", type=float, default=None,
                       metavar="COEF", help=f"-> {flag.ours}: {flag.note}")


def build_parser(semantics: str = "ours") -> argparse.ArgumentParser:
    """The scorer's flags; ``semantics="original"`` puts the original scorer's defaults in
    place of ours (its output format, batch size, ...)."""
    p = argparse.ArgumentParser(
        prog="internvl_scorer.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("paths", nargs="*", help="image files and/or folders (sorted image files)")
    p.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="search folders' sub-folders too, as the original did (the images found "
                        "per sub-folder are printed); --no-recursive: top level only")
    p.add_argument("--list_prompts", action="store_true",
                   help="list the named prompt presets (give a name to --prompt) and exit")
    p.add_argument("--task", default="single", choices=TASKS, help=TASK_HELP)
    p.add_argument("--reference", default=None,
                   help="reference image: style reference for similarity/triplet (then images are "
                        "grouped without it); content reference for content-similarity")
    p.add_argument("--model_id", default=DEFAULT_MODEL_ID,
                   help="VLM checkpoint (hub id or local dir) of a supported family: InternVL3 "
                        "(-hf format), Qwen2.5-VL or Qwen3-VL, read from its config.json; or a "
                        "built-in random tiny model for tests: 'tiny' (InternVL), "
                        "'tiny-qwen2.5-vl', 'tiny-qwen3-vl'; or 'tiny-vlm-photo', a tiny "
                        "InternVL pretrained on bundled photos that answers brightness, warmth, "
                        "colourfulness, sharpness, pair, content and colour-grade questions "
                        "(docs/vlm.md)")
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
    p.add_argument("--max_tiles", type=int, default=None,
                   help="InternVL: most tiles per image (default: the checkpoint's max_patches, "
                        "as its processor tiles: e.g. 7 tiles for 512x768 with 12); 1 = one "
                        "squashed tile (cheapest)")
    p.add_argument("--min_pixels", type=int, default=None,
                   help="Qwen-VL: smallest image area after its dynamic resize (default: the "
                        "checkpoint's processor's)")
    p.add_argument("--max_pixels", type=int, default=None,
                   help="Qwen-VL: largest image area after its dynamic resize; fewer pixels = "
                        "fewer image tokens (default: the checkpoint's processor's)")
    p.add_argument("--batch_size", type=int, default=8, help="samples per model forward (>= 1)")
    p.add_argument("--shift_views", type=views_arg, default=1,
                   help="1 (default): score each image as given; k*k: the mean score over k x k "
                        "copies translated by sub-patch offsets of the model's vision patch "
                        "(the trainer's --internvl_shift_views; docs/vlm.md)")
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
    p.add_argument("--format", default="table", choices=["table", "csv", "json", "original"],
                   help="output format; original: the original scorer's lines (a header, then "
                        "names<TAB>score; the default with --semantics original)")
    p.add_argument("--semantics", default="ours", choices=SEMANTICS,
                   help="original: score as the original internvl_scorer.py did (its reward "
                        "rules, files stretched to 512 x 1024, sub-folders searched, its output "
                        "and defaults); docs/original_mode.md")
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
    add_original_flags(p, "scorer", {"--entropy_coef": _entropy_coef})
    if semantics == "original":
        p.set_defaults(**ORIGINAL_DEFAULTS["scorer"], format="original", semantics="original")
    return p


def check_names(given: list[Setting], args) -> None:
    """The one rule of common/original_flags.py: names that set the same flag must agree
    (--entropy_coef, translated, beside --entropy_bonus; two spellings of one flag)."""
    settings = [s for s in given if s.dest != "original_entropy_coef"]
    coef = next((s for s in reversed(given) if s.dest == "original_entropy_coef"), None)
    if coef is not None and any(s.dest == "entropy_bonus" for s in given):
        ignored = args.semantics != "original" and args.task in COMPARATIVE_TASKS
        value = 0.0 if ignored else entropy_bonus(args)
        how = f" for --task {args.task}" if ignored else ""
        settings.append(Setting("entropy_bonus", value, coef.name,
                                f"{coef.said} (= --entropy_bonus {show(value)}{how})"))
    resolve_source(settings)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(semantics_of(argv))
    given = record_given(parser)
    args = parser.parse_args(argv)
    check_names(given, args)
    if args.list_prompts:
        print(listing())
        return 0
    rows = score_files(args)
    hint = semantics_hint(argv, "scorer")   # after the work: errors stay one line
    if hint:
        print(f"internvl_scorer.py: note: {hint}", file=sys.stderr)
    if args.format == "original":
        print(render_original(rows, args.task, args.resolved_device, args.print_probs))
        return 0
    print(render(rows, args.format))
    if (args.print_layer_probs or args.print_layer_logprobs) and args.format != "json":
        tables = "\n\n".join(layer_tables(r, args.print_layer_probs, args.print_layer_logprobs)
                               for r in rows)
        # csv stays machine-readable on stdout: the tables go to stderr there
        print("\n" + tables, file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, "internvl_scorer.py")


if __name__ == "__main__":
    sys.exit(main())
