"""A VLM's hard answer: the most likely answer to the rating question, with no gradient.

The judge a user gets from a VLM behind an API: one answer, not a distribution. Built on the
promptable VLM reward (:mod:`rewards.vlm`, same options: task, prompt, answer scale,
calibration, temperature), it reads the (calibrated, temperature-scaled) answer distribution
and keeps only its argmax, scored by the answer's value normalised to [0, 1] (digits: d / 9).
For the two-image comparisons (pair, triplet) both orders are read and combined as the soft
score is, ``(v(A,B) + 1 - v(B,A)) / 2``. Runs under ``no_grad``: ``differentiable = False``.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import batch_mean
from .vlm import VLMReward, make_vlm_reward


class VLMAnswer:
    differentiable = False

    def __init__(self, reward: VLMReward):
        self.reward = reward
        self._values = torch.tensor(reward.answer_scale.normalised_values(), dtype=torch.float32)

    def describe(self) -> dict[str, Any]:
        return {**self.reward.describe(), "readout": "argmax answer (no gradient)"}

    @torch.no_grad()
    def __call__(self, images, inputs=None, prompts=None):
        r = self.reward
        out = r.score_slots(r.slots_for(images, inputs))
        values = [self._values.to(p.device)[p.argmax(-1)] for p in out.probs]
        score = values[0] if len(values) == 1 else 0.5 * (values[0] + 1.0 - values[1])
        return score.float(), {"answer_value": batch_mean(score),
                               "soft_expected": out.metrics["expected"]}


def make_vlm_answer_reward(**options: Any) -> VLMAnswer:
    """The VLM's argmax answer as a score; ``options`` are :func:`rewards.vlm.make_vlm_reward`'s."""
    return VLMAnswer(make_vlm_reward(**options))


__all__ = ["VLMAnswer", "make_vlm_answer_reward"]
