"""Differentiable rewards for image-to-image fine-tuning.

The registry holds ONE record per reward (:class:`RewardRecord`): where its factory lives,
what it measures, whether it reads the input image or a reference image, which flags select
it, whether it gives a gradient, which of its options name files (and the flag that reaches
each), and how to build it at its real size without weights (for ``--estimate``). Training,
evaluation, the validation of the flags and the estimator read only these records: adding a
reward is one module plus one record.

A factory takes keyword options, imports its heavy dependencies itself and returns a
callable following the contract in :mod:`rewards.base`. ``build_rewards`` turns a list of
specs into a :class:`~rewards.base.CompositeReward`::

    build_rewards([
        {"name": "grid", "weight": 1.0, "period": 16},
        {"name": "brightness", "weight": 10.0, "target": 0.45, "band": 0.08},
    ])
"""
from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from .base import CompositeReward, NotWeightless, Reward, RewardTerm, check_images

# --------------------------------------------------------------------------- the record
# What a file option holds, for the validation pass of every command (common/checks.py):
#   "file"   an existing file;          "dir"    an existing folder;
#   "path"   an existing file or folder (a weight file or the folder holding it);
#   "image"  an image file that decodes;
#   "weights" a weight file / folder, or a hub id (owner/name) when it does not exist here;
#   "model"  a local model folder (its config.json is read), a hub id or a built-in tiny name.
FILE_KINDS = ("file", "dir", "path", "image", "weights", "model")


@dataclass(frozen=True)
class FileOption:
    """A factory option that names a file or folder, and the flag that reaches it."""

    flag: str                   # the training / evaluate flag (a CLI may rename it)
    kind: str                   # one of FILE_KINDS
    # images: refuse ones more elongated than this (a VLM's processor refuses them later)
    max_aspect: Optional[float] = None


Predicate = Union[bool, Callable[[Mapping[str, Any]], bool]]


@dataclass(frozen=True)
class RewardRecord:
    """Everything the project knows about one reward, written once."""

    name: str
    module: str                 # imported lazily, on first build
    factory: str
    description: str
    # the training flag settings that enable it (empty: only evaluate's --rewards /
    # --reward_spec or a method's own spec build it)
    selected_by: tuple[str, ...]
    reads_input: Predicate = False          # compares the output with the input image?
    reads_reference: Predicate = False      # compares it with a fixed reference image?
    differentiable: bool = True             # False: only GRPO / D3PO can learn from it
    files: Mapping[str, FileOption] = field(default_factory=dict)
    # Options that build it at its real size WITHOUT weights through its own factory
    # (``--estimate`` traces the same preprocessing training runs); None: it cannot be,
    # ``weightless_note`` says why. The caller adds ``device`` (and, for a VLM named by a hub
    # id, ``config``: the registry downloads nothing).
    weightless: Optional[Mapping[str, Any]] = None
    weightless_note: str = ""
    # True: without a model on the device (math on the image, a program, JPEG bytes): an
    # estimate may leave it out without calling its peak a lower bound
    negligible: bool = False

    def option_flag(self, option: str, spec: Mapping[str, Any] | None = None) -> str:
        """The flag that reaches ``option`` for this spec (a VLM's model flag is per term)."""
        if option == "model_id" and spec is not None and spec.get("model_flag"):
            return str(spec["model_flag"])
        if option == "prompt_file" and spec is not None and spec.get("task"):
            return f"--{VLM_TASK_FLAG.get(spec['task'], 'aesthetic')}_prompt_file"
        return self.files[option].flag


def _holds(p: Predicate, spec: Mapping[str, Any]) -> bool:
    return bool(p(spec) if callable(p) else p)


# The VLM tasks (rewards/vlm_prompts.py) and what each compares the output with.
VLM_TASK_FLAG = {"single": "aesthetic", "sharpness": "sharpness", "content-similarity": "content",
                 "similarity": "style", "pair": "aesthetic", "triplet": "style",
                 "artifact": "aesthetic"}


def _vlm_reads_input(spec: Mapping[str, Any]) -> bool:
    task = spec.get("task", "single")
    if task in ("similarity", "content-similarity"):   # the input, unless a reference is given
        return spec.get("reference") is None
    return task in ("pair", "triplet")


def _vlm_reads_reference(spec: Mapping[str, Any]) -> bool:
    return spec.get("reference") is not None


_VLM_FILES = {"model_id": FileOption("--internvl_model_id", "model"),
              "prompt_file": FileOption("--aesthetic_prompt_file", "file"),
              "reference": FileOption("--style_reference", "image", max_aspect=200)}
_VLM_SELECTED = ("--aesthetic_model_type internvl|qwen", "--similarity_backend "
                 "internvl-content|qwen-content", "--sharpness_backend internvl|qwen",
                 "--style_reference (with --style_backend internvl|qwen)")
_PREFERENCE_FILES = {"model_path": FileOption("--preference_model", "weights"),
                     "tokenizer": FileOption("--preference_tokenizer", "weights")}
# A real-size build of a model-backed reward: random (uninitialised) weights, no file read.
_REAL = {"pretrained": False, "config": "real"}


def _record(name, module, factory, description, selected_by, **kw) -> RewardRecord:
    return RewardRecord(name, module, factory, description, tuple(selected_by), **kw)


_RECORDS = [
    _record("grid", "rewards.grid", "make_grid_reward",
            "FFT anti-periodic (grid artifact) penalty, negated", ["--grid_ratio_weight > 0"],
            weightless_note="math on the output image (FFT comb), no model: not traced, "
                            "small next to the models", negligible=True),
    _record("brightness", "rewards.anchors", "make_brightness_anchor",
            "hinge penalty on mean luminance outside target +/- band, negated",
            ["--brightness_anchor_weight > 0"], weightless={}),
    _record("crispness", "rewards.anchors", "make_crispness_floor",
            "hinge penalty when Sobel gradient energy falls below a floor, negated",
            ["--crispness_weight > 0 (default 0.2 in training beside another term)"],
            weightless={}),
    _record("original_grid", "rewards.original_objective", "make_original_grid",
            "the original trainer's grid penalty (projection + selective local), batch mean, "
            "negated", ["--semantics original with --grid_ratio_weight > 0"],
            weightless_note="math on the output image, no model: not traced, small next to "
                            "the models", negligible=True),
    _record("original_brightness", "rewards.original_objective", "make_original_brightness",
            "the original trainer's brightness anchor (linear light, linear hinge), batch mean, "
            "negated", ["--semantics original with --brightness_anchor_weight > 0"],
            weightless={}),
    _record("original_crispness", "rewards.original_objective", "make_original_crispness",
            "the original trainer's crispness anchor (Sobel energy floor), batch mean, negated",
            ["--semantics original with --crispness_weight > 0"], weightless={}),
    _record("internvl", "rewards.vlm", "make_internvl_reward",
            "VLM token-probability score for a text question (promptable; any supported "
            "family, default model InternVL3)", _VLM_SELECTED,
            reads_input=_vlm_reads_input, reads_reference=_vlm_reads_reference,
            files=_VLM_FILES, weightless={"pretrained": False},
            weightless_note="InternVL3 at its real tile and token count; Qwen-VL families "
                            "are not traced yet (dynamic resolution)"),
    _record("vlm", "rewards.vlm", "make_vlm_reward",
            "same as 'internvl': a VLM (InternVL3, Qwen2.5-VL, Qwen3-VL) read as token "
            "probabilities", _VLM_SELECTED,
            reads_input=_vlm_reads_input, reads_reference=_vlm_reads_reference,
            files=_VLM_FILES, weightless={"pretrained": False},
            weightless_note="as 'internvl'"),
    _record("original_vlm", "rewards.vlm_original", "make_original_vlm_reward",
            "the original project's InternVL scorer (one bilinear tile, its chat layout, "
            "calibration and pair rule)", ["--semantics original with a VLM term"],
            reads_input=_vlm_reads_input, reads_reference=_vlm_reads_reference,
            files=_VLM_FILES, weightless={"pretrained": False},
            weightless_note="InternVL3 as the original scores it (one bilinear tile)"),
    _record("lpips", "rewards.perceptual", "make_lpips_reward",
            "LPIPS similarity to the input image (1 - distance)", ["--similarity_backend lpips"],
            reads_input=True, files={"backbone_path": FileOption("--lpips_backbone", "weights")},
            weightless={"pretrained": False}),
    _record("face", "rewards.face", "make_face_identity_reward",
            "FaceNet identity cosine similarity to the input's face",
            ["--similarity_backend face"], reads_input=True,
            files={"weights_path": FileOption("--face_weights", "weights")},
            weightless={"pretrained": False, "detect_faces": False},
            weightless_note="MTCNN (runs on the input without grad) is not traced"),
    _record("aesthetic_scorer", "rewards.aesthetic", "make_laion_aesthetic_reward",
            "LAION aesthetic MLP on CLIP ViT-L/14 embeddings",
            ["--aesthetic_model_type aesthetic_scorer"],
            files={"clip_model": FileOption("--aesthetic_clip_model", "model"),
                   "head_path": FileOption("--aesthetic_head", "weights")},
            weightless=_REAL),
    _record("aesthetic_v25", "rewards.aesthetic", "make_aesthetic_v25_reward",
            "SigLIP-based aesthetic predictor v2.5", ["--aesthetic_model_type v2.5"],
            files={"encoder": FileOption("--aesthetic_encoder", "model"),
                   "model_path": FileOption("--aesthetic_head", "weights")},
            weightless=_REAL),
    _record("aide", "rewards.aide", "make_aide_reward", "AIDE photorealism probability",
            ["--photo_backend aide"],
            files={"aide_repo": FileOption("--aide_repo", "dir"),
                   "aide_resume": FileOption("--aide_resume", "file")},
            weightless_note="AIDE: its model code lives in your AIDE clone (--aide_repo); "
                            "~0.7-1.4 GB of weights"),
    _record("imagereward", "rewards.preference", "make_imagereward_reward",
            "ImageReward (BLIP) human-preference score for the prompt",
            ["--preference_backend imagereward"], files=_PREFERENCE_FILES, weightless=_REAL),
    _record("hpsv2", "rewards.preference", "make_hpsv2_reward",
            "HPSv2 / v2.1 (OpenCLIP ViT-H/14) human-preference score for the prompt",
            ["--preference_backend hpsv2"], files=_PREFERENCE_FILES, weightless=_REAL),
    _record("pickscore", "rewards.preference", "make_pickscore_reward",
            "PickScore (CLIP ViT-H/14) human-preference score for the prompt",
            ["--preference_backend pickscore"], files=_PREFERENCE_FILES, weightless=_REAL),
    _record("dreamsim", "rewards.perceptual", "make_dreamsim_reward",
            "DreamSim similarity to the input (content) or a reference image (style)",
            ["--similarity_backend dreamsim", "--style_reference (with --style_backend dreamsim)"],
            reads_input=lambda spec: spec.get("reference") is None,
            reads_reference=lambda spec: spec.get("reference") is not None,
            files={"model_dir": FileOption("--dreamsim_dir", "dir"),
                   "reference": FileOption("--style_reference", "image")},
            weightless_note="DreamSim: its ViT-B/32 backbone from --dreamsim_dir, ~0.35 GB in "
                            "fp32"),
    _record("jpeg_compressibility", "rewards.compressibility", "make_jpeg_compressibility_reward",
            "negative JPEG size in kB at quality 95 (DDPO / D3PO); no gradient",
            (), differentiable=False,
            weightless_note="JPEG encoding on the CPU: no device memory", negligible=True),
    _record("vlm_answer", "rewards.vlm_answer", "make_vlm_answer_reward",
            "a VLM's most likely answer to the rating question, as its value in [0, 1] "
            "(argmax, not probabilities); no gradient", (),
            reads_input=_vlm_reads_input, reads_reference=_vlm_reads_reference,
            differentiable=False, files=_VLM_FILES, weightless={"pretrained": False},
            weightless_note="as 'internvl', without gradient"),
    _record("edit_specialist", "rewards.edit_specialist", "make_edit_specialist_reward",
            "Image-Editing Specialists' objective: structural (content kept) + score_alpha x "
            "(semantic: a VLM asked whether the edit follows the instruction - rec_lambda x "
            "pixel MSE to the input), z-scored over the batch for ranking (GRPO / D3PO)",
            ["--edit_specialist_weight > 0 (--preset edit_specialist sets it)"], reads_input=True,
            weightless_note="the editing-specialist objective: its VLM (the semantic question) "
                            "and its structural judge (--edit_structural) are not traced yet"),
    _record("command", "rewards.command", "make_command_reward",
            "scores written by a user's program run on the batch's images "
            "(--reward_command; protocol in rewards/command.py); no gradient",
            ["--reward_command"], differentiable=False,
            weightless_note="a user's program: runs outside the training process",
            negligible=True),
]
REGISTRY: dict[str, RewardRecord] = {r.name: r for r in _RECORDS}

# Rewards that give no gradient to the pixels (differentiable=False): only the methods that
# learn from scores alone (GRPO, D3PO) can use them. Their factories' objects also carry
# ``differentiable = False``.
NON_DIFFERENTIABLE: frozenset[str] = frozenset(n for n, r in REGISTRY.items()
                                               if not r.differentiable)


def record(name: str) -> RewardRecord:
    """The registry record of ``name`` (ValueError listing the known names otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(available_rewards())}")
    return REGISTRY[name]


def is_differentiable(name: str) -> bool:
    """Does the registered reward ``name`` give a gradient with respect to the images?"""
    return record(name).differentiable


def reads_input(spec: Mapping[str, Any]) -> bool:
    """Does the reward of this spec compare the output with the input image?"""
    return _holds(record(spec["name"]).reads_input, spec)


def reads_reference(spec: Mapping[str, Any]) -> bool:
    """Does the reward of this spec compare the output with a fixed reference image?"""
    return _holds(record(spec["name"]).reads_reference, spec)


def file_options(spec: Mapping[str, Any]) -> list[tuple[str, FileOption, Any]]:
    """(flag, FileOption, value) of every option of ``spec`` that names a file or folder; the
    flag is the one that reaches it for this term (a VLM's model flag, its prompt file's)."""
    rec = record(spec["name"])
    return [(rec.option_flag(opt, spec), fo, spec[opt])
            for opt, fo in rec.files.items() if isinstance(spec.get(opt), (str, os.PathLike))]


def option_flags(spec: Mapping[str, Any]) -> dict[str, str]:
    """Factory keyword (``backbone_path=``) -> the flag that reaches it, for error messages."""
    rec = record(spec["name"])
    return {f"{opt}=": rec.option_flag(opt, spec) for opt in rec.files}


def available_rewards() -> list[str]:
    return sorted(REGISTRY)


def describe_rewards() -> dict[str, str]:
    return {name: rec.description for name, rec in sorted(REGISTRY.items())}


def selecting_flags(known: Iterable[str] | None = None) -> list[str]:
    """The flags that enable a reward term, each once, in registry order (for messages);
    ``known``: only these flag names (without ``--``), i.e. the ones a command has."""
    keep = None if known is None else set(known)
    seen: dict[str, None] = {}
    for rec in _RECORDS:
        for text in rec.selected_by:
            flag = text.split()[0]
            if keep is None or flag.removeprefix("--") in keep:
                seen.setdefault(flag, None)
    return list(seen)


def get_factory(name: str):
    """Return the factory registered under ``name`` (imports its module lazily)."""
    rec = record(name)
    try:
        module = importlib.import_module(rec.module)
    except ModuleNotFoundError as exc:
        if exc.name == rec.module:
            raise NotImplementedError(
                f"reward {name!r} is registered but its module {rec.module} is not "
                f"part of this version of the project"
            ) from None
        raise
    try:
        return getattr(module, rec.factory)
    except AttributeError:
        raise NotImplementedError(
            f"reward {name!r}: {rec.module}.{rec.factory} is not implemented in this version"
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


def _split(spec: Mapping[str, Any]) -> tuple[str, str, float, dict]:
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"reward spec without 'name': {spec}")
    name = spec.pop("name")
    weight = float(spec.pop("weight", 1.0))
    term = spec.pop("term", name)
    return name, term, weight, spec


def build_term(spec: Mapping[str, Any], **extra: Any) -> RewardTerm:
    """One :class:`RewardTerm` from a spec (``name``, optional ``weight`` and ``term``, the
    factory's options); ``extra`` overrides options."""
    name, term, weight, options = _split(spec)
    fn = build_reward(name, **{**options, **extra})
    return RewardTerm(name=term, weight=weight, fn=fn, options={"reward": name, **options},
                      differentiable=is_differentiable(name))


def build_weightless(spec: Mapping[str, Any], **extra: Any) -> RewardTerm:
    """The term of ``spec`` built at its real size WITHOUT weights, through its own factory.

    For ``--estimate``: call it inside a fake-tensor mode and the term runs the same
    preprocessing and model classes as training, on tensors without storage. ``extra``
    (``device``, ``config`` ...) overrides the spec's options. Raises :class:`NotWeightless`
    for rewards whose record has no weightless build.
    """
    rec = record(spec["name"])
    if rec.weightless is None:
        raise NotWeightless(rec.weightless_note or f"reward {rec.name!r} has no weightless build")
    if "device" in extra and "device" not in inspect.signature(get_factory(rec.name)).parameters:
        extra = {k: v for k, v in extra.items() if k != "device"}   # math: no device option
    return build_term(spec, **{**rec.weightless, **extra})


def build_rewards(specs: Iterable[Mapping[str, Any]]) -> CompositeReward:
    """Build a :class:`CompositeReward` from specs.

    Each spec is a mapping with ``name`` (registry name), optional ``weight``
    (default 1.0), optional ``term`` (the name logged for this term; defaults to
    ``name``, needed when one reward appears twice) and the factory's options.
    Terms with weight 0 are skipped (so a disabled flag costs nothing).
    """
    return CompositeReward([build_term(spec) for spec in specs if _split(spec)[2] != 0.0])


__all__ = [
    "CompositeReward",
    "FILE_KINDS",
    "FileOption",
    "NON_DIFFERENTIABLE",
    "NotWeightless",
    "REGISTRY",
    "Reward",
    "RewardRecord",
    "RewardTerm",
    "available_rewards",
    "build_reward",
    "build_rewards",
    "build_term",
    "build_weightless",
    "check_images",
    "describe_rewards",
    "file_options",
    "get_factory",
    "is_differentiable",
    "option_flags",
    "reads_input",
    "reads_reference",
    "record",
    "selecting_flags",
]
