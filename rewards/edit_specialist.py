"""The objective of Image-Editing Specialists (Benarous, Du, Yang 2025, arXiv 2504.12833).

Checked against the authors' code, ebenarous/EditSpecialists: ``scripts/train.py`` (scores ->
preference ranking), ``EditSpecialists/reward_modeling/score_functions.py`` (the semantic
score and its reconstruction term) and ``config/base.py`` (``score_alpha = 1``,
``rec_lambda = 0.5``). There, each edit gets two distances, lower is better:

* structural ``L_struct``: L1 between the depth maps (Depth Anything v2) of the edit and of
  the input -- is the scene's structure kept;
* semantic ``L_sem``: DreamSim patch cosine distance between the edited object's region and
  the style reference's, plus ``rec_lambda`` x the pixel MSE between edit and input outside
  that region (Grounded-SAM2 masks) -- did the edit happen, and is the rest unchanged.

Each is standardised over the whole batch (``(L - mean) / (std + 1e-8)``, all processes)
and the edits of an input are ranked by ``z(L_struct) + score_alpha z(L_sem)``; D3PO-style
(Plackett-Luce over 2 edits = DPO) updates learn the ranking.

Here the same arithmetic on scores (higher is better, so every sign flips and ``z(-L) =
-z(L)``)::

    rank score  = z(S_struct) + score_alpha * z(S_sem - rec_lambda * MSE(edit, input))

with ``S_struct`` a content-kept similarity to the input (LPIPS or DreamSim as 1 - distance,
or a VLM content question), ``S_sem`` a VLM asked whether the edit carries out the
instruction (the edit and the input shown, the instruction in the question), and ``MSE``
over the whole image. What differs from the paper, and why: no depth model (we ship none;
the structural judges are the project's content rewards), no segmentation (no Grounded-SAM2:
the reconstruction term covers the whole image, so it also charges the edited region), the
semantic judge is a VLM question instead of DreamSim to a style image (instruction edits
have no reference image). ``standardize=False`` (``--method alignprop``, a gradient method:
the batch mean of z-scores is 0 and would give no gradient) gives the plain
``S_struct + score_alpha (S_sem - rec_lambda MSE)``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from . import build_reward
from .base import check_images

DEFAULT_SEMANTIC_PROMPT = (
    "Image 2 is a photo and Image 1 is an edit of it made for the instruction: "
    "\"{instruction}\". How well does Image 1 carry out that instruction? Rate on a scale from "
    "0 to 9, where 0 is not at all and 9 is perfectly. Answer with a single digit.")
Z_EPS = 1e-8        # the authors' (std + 1e-8)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + 1e-8) over the batch (population std, as numpy's)."""
    return (x - x.mean()) / (x.std(unbiased=False) + Z_EPS) if x.numel() > 1 else x * 0


class EditSpecialistReward:
    """Structural + score_alpha x (semantic - rec_lambda x reconstruction); see the module doc."""

    def __init__(self, structural: Callable, semantic_for: Callable[[str], Callable],
                 score_alpha: float = 1.0, rec_lambda: float = 0.5, standardize: bool = True,
                 semantic_prompt: str = DEFAULT_SEMANTIC_PROMPT):
        if "{instruction}" not in semantic_prompt:
            raise ValueError("the semantic question must contain {instruction} (where each "
                             "sample's edit instruction goes)")
        for name, v in (("score_alpha", score_alpha), ("rec_lambda", rec_lambda)):
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        self.structural = structural
        self._semantic_for = semantic_for
        self._semantic: dict[str, Callable] = {}
        self.score_alpha, self.rec_lambda = float(score_alpha), float(rec_lambda)
        self.standardize = bool(standardize)
        self.semantic_prompt = semantic_prompt
        self.differentiable = bool(getattr(structural, "differentiable", True))

    def semantic(self, instruction: str) -> Callable:
        """The semantic judge of one instruction (built once; the VLM itself is shared)."""
        if instruction not in self._semantic:
            self._semantic[instruction] = self._semantic_for(
                self.semantic_prompt.replace("{instruction}", instruction))
        return self._semantic[instruction]

    def describe(self) -> dict:
        return {"score_alpha": self.score_alpha, "rec_lambda": self.rec_lambda,
                "standardize": self.standardize, "semantic_prompt": self.semantic_prompt}

    def __call__(self, images: torch.Tensor, inputs: torch.Tensor | None = None,
                 prompts: Sequence[str] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        check_images(images)
        if inputs is None or prompts is None:
            raise ValueError("the edit-specialist objective compares each edit with its input "
                             "and its instruction: inputs and prompts are needed")
        inputs = inputs.to(images.device, images.dtype)
        struct = self.structural(images, inputs, prompts)[0].float()
        sem = torch.zeros(len(images), device=images.device)
        for instruction in dict.fromkeys(prompts):    # one question per instruction
            idx = [i for i, p in enumerate(prompts) if p == instruction]
            scores = self.semantic(instruction)(images[idx], inputs[idx], [instruction] * len(idx))
            sem = sem.index_put((torch.tensor(idx, device=sem.device),),
                                scores[0].float().to(sem.device))
        rec = ((images.float() - inputs.float()) ** 2).mean((1, 2, 3))
        semantic = sem - self.rec_lambda * rec.to(sem.device)
        struct = struct.to(sem.device)
        if self.standardize:
            total = standardize(struct) + self.score_alpha * standardize(semantic)
        else:
            total = struct + self.score_alpha * semantic
        return total, {"structural": struct.detach().mean().item(),
                       "semantic": sem.detach().mean().item(),
                       "reconstruction_mse": rec.detach().mean().item()}


def make_edit_specialist_reward(structural: Mapping[str, Any], semantic: Mapping[str, Any],
                                score_alpha: float = 1.0, rec_lambda: float = 0.5,
                                standardize: bool = True,
                                semantic_prompt: str = DEFAULT_SEMANTIC_PROMPT
                                ) -> EditSpecialistReward:
    """``structural``: a registry spec of the content judge (``{"name": "lpips", ...}``);
    ``semantic``: options of the ``internvl`` (VLM) reward asked the instruction question."""
    spec = dict(structural)
    structural_fn = build_reward(spec.pop("name"), **spec)
    vlm = dict(semantic)

    def semantic_for(question: str):
        return build_reward("internvl", task="content-similarity", prompt=question, **vlm)

    return EditSpecialistReward(structural_fn, semantic_for, score_alpha, rec_lambda,
                                standardize, semantic_prompt)


__all__ = ["EditSpecialistReward", "make_edit_specialist_reward", "standardize",
           "DEFAULT_SEMANTIC_PROMPT"]
