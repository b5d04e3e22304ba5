"""What the tests of the pretrained tiny VLMs (tiny-vlm-photo, tiny-qwen-vl-photo) share: a
question's reward, colour-shifted photos, and what the brightness and warmth questions each
see between the two sides of an edit; the flags a pretraining command records."""
from __future__ import annotations

import shlex

import torch

from alignprop import tiny_vlm_data as data
from rewards.vlm import make_vlm_reward

# Two sides of an edit, as RGB offsets: the same offset on every channel keeps R - B (nearly)
# where it was; the warmth edit keeps mean luma (nearly) where it was.
EDITS = {"brightness": ((0.15,) * 3, (-0.15,) * 3),
         "warmth": ((0.1, 0.0, -0.1), (-0.1, 0.0, 0.1))}


def question_reward(model_id: str, task: str = "single", attr: str = "brightness", **kw):
    """``model_id``'s reward for the pretraining's own question (single, pair, content or
    style)."""
    question = {"single": data.QUESTIONS, "pair": data.PAIR_QUESTIONS}.get(task)
    prompt = (question[attr] if question else
              data.CONTENT_QUESTION if task == "content-similarity" else data.STYLE_QUESTION)
    return make_vlm_reward(task, model_id=model_id, dtype="float32", device="cpu", prompt=prompt,
                           **kw)


def shift(x: torch.Tensor, rgb) -> torch.Tensor:
    return (x + torch.tensor(rgb).view(1, 3, 1, 1)).clamp(0, 1)


@torch.no_grad()
def question_gaps(model_id: str, photos: torch.Tensor, edit: str, **kw) -> dict[str, torch.Tensor]:
    """Score of the more-``edit`` side minus the less-``edit`` side, per photo, as the
    brightness and the warmth questions each see it."""
    more, less = (shift(photos, rgb) for rgb in EDITS[edit])
    gaps = {}
    for attr in ("brightness", "warmth"):
        r = question_reward(model_id, attr=attr, **kw)
        gaps[attr] = r(more)[0] - r(less)[0]
    return gaps


def recorded_flags(command: str, skip: set[str]) -> dict[str, str | None]:
    """{flag: its value, or None for a switch} of a pretraining command as a manifest records
    it ("python -m alignprop.pretrain_tiny_vlm --flag value ..."), without the flags in
    ``skip``."""
    words = shlex.split(command)[3:]
    flags, i = {}, 0
    while i < len(words):
        value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
        flags[words[i]] = value
        i += 2 if value is not None else 1
    return {k: v for k, v in flags.items() if k not in skip}
