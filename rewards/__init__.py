"""Differentiable rewards for image-to-image fine-tuning.

Registry of named factories. A factory takes keyword options, imports its heavy
dependencies itself and returns a callable following the contract in
:mod:`rewards.base`. ``build_rewards`` turns a list of specs into a
:class:`~rewards.base.CompositeReward`::

    build_rewards([
        {"name": "grid", "weight": 1.0, "period": 16},
        {"name": "brightness", "weight": 10.0, "target": 0.45, "band": 0.08},
    ])
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Iterable, Mapping

from .base import CompositeReward, Reward, RewardTerm, check_images

# name -> (module, factory function, one-line description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "grid": ("rewards.grid", "make_grid_reward",
             "FFT anti-periodic (grid artifact) penalty, negated"),
    "brightness": ("rewards.anchors", "make_brightness_anchor",
                   "hinge penalty on mean luminance outside target +/- band, negated"),
    "crispness": ("rewards.anchors", "make_crispness_floor",
                  "hinge penalty when Sobel gradient energy falls below a floor, negated"),
    "internvl": ("rewards.vlm", "make_internvl_reward",
                 "VLM token-probability score for a text question (promptable; any supported "
                 "family, default model InternVL3)"),
    "vlm": ("rewards.vlm", "make_vlm_reward",
            "same as 'internvl': a VLM (InternVL3, Qwen2.5-VL, Qwen3-VL) read as token "
            "probabilities"),
    "lpips": ("rewards.perceptual", "make_lpips_reward",
              "LPIPS similarity to the input image (1 - distance)"),
    "face": ("rewards.face", "make_face_identity_reward",
             "FaceNet identity cosine similarity to the input's face"),
    "aesthetic_scorer": ("rewards.aesthetic", "make_laion_aesthetic_reward",
                         "LAION aesthetic MLP on CLIP ViT-L/14 embeddings"),
    "aesthetic_v25": ("rewards.aesthetic", "make_aesthetic_v25_reward",
                      "SigLIP-based aesthetic predictor v2.5"),
    "aide": ("rewards.aide", "make_aide_reward",
             "AIDE photorealism probability"),
    "imagereward": ("rewards.preference", "make_imagereward_reward",
                    "ImageReward (BLIP) human-preference score for the prompt"),
    "hpsv2": ("rewards.preference", "make_hpsv2_reward",
              "HPSv2 / v2.1 (OpenCLIP ViT-H/14) human-preference score for the prompt"),
    "pickscore": ("rewards.preference", "make_pickscore_reward",
                  "PickScore (CLIP ViT-H/14) human-preference score for the prompt"),
    "dreamsim": ("rewards.perceptual", "make_dreamsim_reward",
                 "DreamSim similarity to the input (content) or a reference image (style)"),
    "jpeg_compressibility": ("rewards.compressibility", "make_jpeg_compressibility_reward",
                             "negative JPEG size in kB at quality 95 (DDPO / D3PO); no gradient"),
    "vlm_answer": ("rewards.vlm_answer", "make_vlm_answer_reward",
                   "a VLM's most likely answer to the rating question, as its value in [0, 1] "
                   "(argmax, not probabilities); no gradient"),
    "edit_specialist": ("rewards.edit_specialist", "make_edit_specialist_reward",
                        "Image-Editing Specialists' objective: structural (content kept) + "
                        "score_alpha x (semantic: a VLM asked whether the edit follows the "
                        "instruction - rec_lambda x pixel MSE to the input), z-scored over the "
                        "batch for ranking (GRPO / D3PO)"),
    "command": ("rewards.command", "make_command_reward",
                "scores written by a user's program run on the batch's images "
                "(--reward_command; protocol in rewards/command.py); no gradient"),
}

# Rewards that give no gradient to the pixels (differentiable=False): only the methods that
# learn from scores alone (GRPO, D3PO) can use them. Their factories' objects also carry
# ``differentiable = False``.
NON_DIFFERENTIABLE: frozenset[str] = frozenset({"jpeg_compressibility", "vlm_answer", "command"})


def is_differentiable(name: str) -> bool:
    """Does the registered reward ``name`` give a gradient with respect to the images?"""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(available_rewards())}")
    return name not in NON_DIFFERENTIABLE


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def describe_rewards() -> dict[str, str]:
    return {name: spec[2] for name, spec in sorted(_REGISTRY.items())}


def get_factory(name: str):
    """Return the factory registered under ``name`` (imports its module lazily)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown reward {name!r}; known rewards: {', '.join(available_rewards())}"
        )
    module_name, fn_name, _ = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise NotImplementedError(
                f"reward {name!r} is registered but its module {module_name} is not "
                f"part of this version of the project"
            ) from None
        raise
    try:
        return getattr(module, fn_name)
    except AttributeError:
        raise NotImplementedError(
            f"reward {name!r}: {module_name}.{fn_name} is not implemented in this version"
        ) from None


def build_reward(name: str, **options: Any) -> Reward:
    """Build one reward by registry name, refusing options the factory does not take."""
    factory = get_factory(name)
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(
                f"reward {name!r} got unknown option(s) {unknown}; "
                f"it accepts: {', '.join(p for p in params if not p.startswith('_'))}"
            )
    return factory(**options)


def build_rewards(specs: Iterable[Mapping[str, Any]]) -> CompositeReward:
    """Build a :class:`CompositeReward` from specs.

    Each spec is a mapping with ``name`` (registry name), optional ``weight``
    (default 1.0), optional ``term`` (the name logged for this term; defaults to
    ``name``, needed when one reward appears twice) and the factory's options.
    Terms with weight 0 are skipped (so a disabled flag costs nothing).
    """
    terms = []
    for spec in specs:
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"reward spec without 'name': {spec}")
        name = spec.pop("name")
        weight = float(spec.pop("weight", 1.0))
        term = spec.pop("term", name)
        if weight == 0.0:
            continue
        fn = build_reward(name, **spec)
        terms.append(RewardTerm(name=term, weight=weight, fn=fn, options={"reward": name, **spec},
                                differentiable=is_differentiable(name)))
    return CompositeReward(terms)


__all__ = [
    "CompositeReward",
    "Reward",
    "RewardTerm",
    "available_rewards",
    "build_reward",
    "build_rewards",
    "check_images",
    "describe_rewards",
    "get_factory",
    "is_differentiable",
    "NON_DIFFERENTIABLE",
]
