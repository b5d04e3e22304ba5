"""What ``tiny-vlm-photo`` answers on real photos it never saw: the README's table.

    python -m alignprop.tiny_vlm_table [--json media/tiny_vlm_answers.json]

The four held-out photos (astronaut, chelsea, coffee, rocket: never seen in pretraining) are
loaded at full size, as they are and with one edit at a time (darker, warmer, cooler,
greyscale, blurred), and asked the four ``single`` questions the way ``internvl_scorer.py
--model_id tiny-vlm-photo --prompt "<question>"`` asks them (the images go whole to
:func:`rewards.vlm.make_vlm_reward`, whose preprocessing resizes them to the model's 64 px
tile). A cell is the expected answer on the 0..9 scale (score x 9, calibration ``none``) with
the true statistic of the 64 px image the model sees; the table gives the means over the four
photos per edit, the JSON (``--json``) every photo. tests/test_tiny_vlm_photo.py checks the
README table against the committed JSON and the JSON against the model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common.cli import run_cli
from common.photos import HELD_OUT, load_files
from rewards.vlm import make_vlm_reward

from . import tiny_vlm_data as data

MODEL = "tiny-vlm-photo"
WARM = (0.12, 0.0, -0.12)


def edits(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The edits shown for a (1,3,H,W) photo in [0,1] (blur scaled with the photo's size)."""
    luma = (x * x.new_tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    warm = x.new_tensor(WARM).view(1, 3, 1, 1)
    sigma = 1.5 * min(x.shape[-2:]) / data.SIZE     # 1.5 px of the 64 px image the model sees
    return {
        "as is": x,
        "darker": (x * 0.55).clamp(0, 1),
        "warmer": (x + warm).clamp(0, 1),
        "cooler": (x - warm).clamp(0, 1),
        "greyscale": luma.expand_as(x),
        "blurred": data.gaussian_blur(x, torch.tensor([sigma])),
    }


def seen_image(reward, x: torch.Tensor) -> torch.Tensor:
    """The image the model sees (what the statistic is taken of), back to [0, 1]: InternVL's
    64 px tile, or the Qwen-VL patches (merged-group order, each frame twice) put back
    together at the size the family resized to."""
    seen, layout = reward.family.prepare(reward.bundle, x, reward.image_options)
    spec = reward.bundle.spec
    if seen.dim() == 5:                              # InternVL: (R, tiles, 3, H, W)
        tile = seen[:, 0]
    else:                                            # Qwen-VL: (R, h*w, 3*T*P*P)
        _, h, w = layout
        p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
        z = seen.view(-1, h // m, w // m, m, m, 3, t, p, p)[..., 0, :, :]
        tile = z.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(-1, 3, h * p, w * p)
    mean = tile.new_tensor(spec.image_mean).view(1, 3, 1, 1)
    std = tile.new_tensor(spec.image_std).view(1, 3, 1, 1)
    return tile * std + mean


@torch.no_grad()
def answers(model_id: str = MODEL) -> list[dict]:
    """Rows: photo, edit, and per attribute the answer (0..9) and the true statistic."""
    rewards = {a: make_vlm_reward("single", model_id=model_id, dtype="float32", device="cpu",
                                  prompt=q) for a, q in data.QUESTIONS.items()}
    rows = []
    for name, photo in zip(HELD_OUT, load_files(HELD_OUT)):
        for edit, x in edits(photo[None]).items():
            tile = seen_image(next(iter(rewards.values())), x)
            rows.append({
                "photo": name.rsplit(".", 1)[0], "edit": edit,
                "answer": {a: round(float(r(x)[0]) * 9, 2) for a, r in rewards.items()},
                "statistic": {a: round(float(data.statistic(a, tile)), 3)
                              for a in data.ATTRIBUTES}})
    return rows


def markdown(rows: list[dict]) -> str:
    """One row per edit: the mean answer over the photos and the mean true statistic."""
    head = ("| held-out photos | " + " | ".join(f"{a}: answer ({_stat_name(a)})"
                                              for a in data.ATTRIBUTES) + " |")
    lines = [head, "|---|" + "---:|" * len(data.ATTRIBUTES)]
    for edit in dict.fromkeys(r["edit"] for r in rows):
        sel = [r for r in rows if r["edit"] == edit]
        cells = []
        for a in data.ATTRIBUTES:
            ans = sum(r["answer"][a] for r in sel) / len(sel)
            stat = sum(r["statistic"][a] for r in sel) / len(sel)
            cells.append(f"{ans:.1f} ({stat:+.2f})" if a == "warmth" else f"{ans:.1f} ({stat:.2f})")
        lines.append(f"| {edit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stat_name(attr: str) -> str:
    return {"brightness": "luma", "warmth": "R-B", "colourfulness": "M",
            "sharpness": "log mean abs Laplacian"}[attr]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignprop.tiny_vlm_table",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model_id", default=MODEL, help="VLM to ask (default tiny-vlm-photo).")
    parser.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = answers(args.model_id)
    print(markdown(rows))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model_id": args.model_id, "questions": data.QUESTIONS,
                                    "rows": rows}, indent=2) + "\n")
    return 0


def cli(argv=None) -> int:
    return run_cli(main, argv, "alignprop.tiny_vlm_table")


if __name__ == "__main__":
    sys.exit(cli())
