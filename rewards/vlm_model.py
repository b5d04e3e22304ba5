"""Loading vision-language models for the token-probability reward, whatever their family.

One entry point, :func:`load_vlm`, takes

* a hub id (e.g. ``OpenGVLab/InternVL3-14B-hf``, ``Qwen/Qwen2.5-VL-7B-Instruct``,
  ``Qwen/Qwen3-VL-8B-Instruct``) or a local directory holding such a checkpoint: the family is
  read from ``config.json`` (``model_type``), never guessed from the name;
* a built-in tiny model name (``tiny`` / ``tiny-internvl``, ``tiny-qwen2.5-vl``,
  ``tiny-qwen3-vl``): the family's real transformers classes with a few-thousand-parameter random
  model from a fixed seed and a tokenizer built locally, so every code path of a real
  checkpoint runs offline in seconds,
* the name of a shipped pretrained tiny VLM (``tiny-vlm-photo``, :mod:`rewards.vlm_named`): its
  folder under ``rewards/assets/``, checked against its sha256 manifest, loaded as a local
  directory,

and returns a :class:`VLMBundle` (model + processor + the family adapter + the image numbers the
adapter read from the processor). Bundles are cached per ``(model_id, dtype, device,
trust_remote_code)`` so several reward terms share one copy of a large model, and two different
models (say InternVL for style and Qwen for content) can be loaded side by side.

Everything family-specific (model class, tiny config, differentiable preprocessing, how an image
placeholder expands) lives in one adapter module per family under :mod:`rewards.vlm_families`.

InternVL3 in OpenGVLab's remote-code layout (``OpenGVLab/InternVL3-14B``, model_type
``internvl_chat``) is read without running its code (:mod:`rewards.internvl_remote`): a hub id
is mapped to its ``-hf`` twin with one logged line, a local folder is converted on load.
"""
from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.hub import WeightFileError, brief, model_unavailable
from common.qwen_vocab import build_internvl3_processor

from .base import NotWeightless
from .internvl_remote import REMOTE_MODEL_TYPE, hf_twin, load_remote_internvl, remote_config
from .vlm_families import family_for_model_type, family_for_tiny, supported_families
from .vlm_named import named_vlm_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "OpenGVLab/InternVL3-14B-hf"
MODEL_FLAG = "--model_id (internvl_scorer.py) / --internvl_model_id or --qwen_model_id (training)"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: Any) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch.dtype) -> torch.dtype; clear error otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: float32, bfloat16, float16")
    return _DTYPES[key]


def resolve_device(device: Any) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class VLMBundle:
    """A loaded VLM with what the reward needs to build its inputs itself.

    ``spec`` holds the numbers the family adapter read from the processor (tile size, patch
    size, pixel budget, mean/std, ...); its fields are also readable as attributes of the bundle
    (``bundle.tile_size`` for InternVL, ``bundle.patch_size`` for Qwen-VL).
    """

    model: Any                 # the family's *ForConditionalGeneration, eval, frozen
    processor: Any             # the family's processor (tokenizer + image processor + chat template)
    model_id: str
    dtype: torch.dtype
    device: torch.device
    family: Any                # the adapter (rewards.vlm_families.VLMFamily)
    spec: Any                  # family-specific image numbers (a dataclass)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def __getattr__(self, name: str):
        # only reached for names the dataclass does not have: delegate to the family's spec
        if name in ("spec", "__setstate__", "__getstate__"):
            raise AttributeError(name)
        try:
            return getattr(self.spec, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__} ({self.family.name}) has no attribute "
                                 f"{name!r}") from None


# --------------------------------------------------------------------------- cache
_CACHE: dict[tuple, VLMBundle] = {}
_LOCK = threading.Lock()


def load_vlm(model_id: str = DEFAULT_MODEL_ID, dtype: Any = "bfloat16", device: Any = None,
             trust_remote_code: bool = False, flag: str = MODEL_FLAG) -> VLMBundle:
    """Return the (shared) bundle for ``model_id``; loads it on first use.

    Raises :class:`common.hub.ModelUnavailableError` (naming ``flag``) when the checkpoint cannot
    be found, and ``ValueError`` when it is not a vision-language model of a supported family.
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    tiny = family_for_tiny(model_id)
    # a shipped pretrained tiny VLM (tiny-vlm-photo): its sha256-verified local folder
    named = named_vlm_dir(model_id)
    local = named if named is not None else Path(str(model_id)).expanduser()
    twin = None if local.exists() else hf_twin(model_id)
    if twin is not None:
        logger.warning("%s is OpenGVLab's remote-code layout (its own Python classes, never run "
                       "here): loading its transformers twin %s", model_id, twin)
        model_id = twin
    key_id = model_id if tiny is not None else str(local) if local.exists() else model_id
    key = (key_id, torch_dtype, str(dev), bool(trust_remote_code))
    with _LOCK:
        if key not in _CACHE:
            if tiny is not None:
                family = tiny
                model, processor = family.build_tiny()
            else:
                family, model, processor = _load_pretrained(key_id, torch_dtype, trust_remote_code,
                                                            flag)
            model = model.to(device=dev, dtype=torch_dtype).eval().requires_grad_(False)
            _CACHE[key] = VLMBundle(model=model, processor=processor, model_id=model_id,
                                    dtype=torch_dtype, device=dev, family=family,
                                    spec=family.image_spec(model, processor))
        return _CACHE[key]


def clear_cache() -> None:
    """Drop every cached model (frees memory; the next load reads the checkpoint again)."""
    with _LOCK:
        _CACHE.clear()


def read_config(model_id: str, trust_remote_code: bool = False, flag: str = MODEL_FLAG):
    """``AutoConfig`` of a hub id / local dir, with the project's one-line errors."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise ValueError(
                f"{model_id!r} ships its own model code, which the reward never runs (it uses "
                f"transformers' classes): use the checkpoint's transformers-format twin (for "
                f"OpenGVLab's InternVL the '-hf' repository, e.g. OpenGVLab/InternVL3-14B-hf), or "
                f"a local copy of an InternVL checkpoint in OpenGVLab's layout (converted on "
                f"load)") from None
        raise model_unavailable("vision-language model", model_id, flag, exc,
                                repo_id=DEFAULT_MODEL_ID) from None


def check_vision_config(config, model_id: str):
    """The family adapter for ``config`` (from its ``model_type``); refuse anything else."""
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"model {model_id!r} (model_type={model_type!r}) has no vision_config: it is not a "
            f"vision-language model. Pass a checkpoint of a supported family "
            f"({supported_families()}) in transformers format, or a tiny model name.")
    family = family_for_model_type(model_type)
    if model_type == REMOTE_MODEL_TYPE:
        raise ValueError(
            f"model {model_id!r} is InternVL in OpenGVLab's remote-code layout: pass a local "
            f"folder of it (converted on load, no code run) or its '-hf' twin")
    if family is None:
        raise ValueError(
            f"model {model_id!r} has model_type={model_type!r}; the VLM reward supports "
            f"{supported_families()} in transformers format (for InternVL the '-hf' checkpoints, "
            f"e.g. OpenGVLab/InternVL3-14B-hf)")
    return family


def _load_pretrained(model_id: str, dtype: torch.dtype, trust_remote_code: bool, flag: str):
    from transformers import AutoProcessor

    local = Path(str(model_id)).expanduser()
    if local.is_dir() and remote_config(local) is not None:
        model, processor = load_remote_internvl(local, dtype)
        return family_for_model_type("internvl"), model, processor
    config = read_config(model_id, trust_remote_code, flag)
    family = check_vision_config(config, model_id)
    try:
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        model = family.model_class().from_pretrained(model_id, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
    except pickle.UnpicklingError:   # torch's own words advise the unsafe path: not shown
        raise WeightFileError(f"{flag} {model_id}: a weight file of this model holds pickled "
                              f"Python objects besides tensors; it is not loaded (unpickling "
                              f"them could run code)", flag) from None
    except OSError as exc:
        raise model_unavailable(f"{family.name} model", model_id, flag, exc,
                                repo_id=DEFAULT_MODEL_ID) from None
    except (RuntimeError, ValueError, EOFError, KeyError) as exc:
        # truncated shards (SafetensorError is a plain Exception: named below), wrong shapes
        raise WeightFileError(f"{flag} {model_id}: its weights cannot be loaded "
                              f"({type(exc).__name__}: {brief(exc, 160)})", flag) from None
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type
        if type(exc).__name__ != "SafetensorError":
            raise
        raise WeightFileError(f"{flag} {model_id}: a safetensors file of this model is truncated "
                              f"or corrupt ({brief(exc, 160)})", flag) from None
    return family, model, processor


# --------------------------------------------------------------------------- no weights
# Weightless bundles of one estimate, shared by the terms that name the same model and
# configuration (as load_vlm's cache shares a loaded model); emptied by the estimator.
_WEIGHTLESS: dict[tuple, tuple[Any, VLMBundle]] = {}


def clear_weightless_cache() -> None:
    _WEIGHTLESS.clear()


def _traceable(family, model_id: str) -> None:
    if family.name != "InternVL3":
        raise NotWeightless(f"{family.name} ({model_id}): not traced yet (its rope index and "
                            f"dynamic-resolution inputs read values, which a weightless trace "
                            f"has not)")


def build_weightless_vlm(model_id: str, config: Any = None, dtype: Any = "bfloat16",
                         device: Any = None, flag: str = MODEL_FLAG) -> VLMBundle:
    """The model of ``model_id`` at its real size WITHOUT weights, and its processor.

    For ``--estimate`` (built inside a fake-tensor mode: nothing is allocated); never cached,
    so it cannot stand in for a loaded model. ``config``: the model's configuration (a
    ``PretrainedConfig``) when ``model_id`` is a hub id -- nothing is downloaded; a local
    folder's own ``config.json`` (and processor files, when present) are read; a tiny name is
    the tiny model itself. Only InternVL3 is built this way so far: raises
    :class:`rewards.base.NotWeightless` for the Qwen-VL families (their dynamic-resolution
    inputs need their own processor files).
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    key = (str(model_id), torch_dtype, str(dev), id(config))
    if key in _WEIGHTLESS:
        return _WEIGHTLESS[key][1]
    tiny = family_for_tiny(model_id)
    processor = None
    if tiny is not None:
        family = tiny
        _traceable(family, model_id)
        model, processor = family.build_tiny()
    else:
        local = Path(str(model_id)).expanduser()
        if config is None:
            if not local.is_dir():
                raise NotWeightless(f"{model_id!r}: no configuration to build it from without "
                                    f"weights (pass a local folder holding its config.json)")
            config = read_config(str(local), flag=flag)
        family = check_vision_config(config, model_id)
        _traceable(family, model_id)
        if local.is_dir():
            try:
                from transformers import AutoProcessor

                processor = AutoProcessor.from_pretrained(str(local))
            except (OSError, ValueError, TypeError):  # a config-only folder: the real vocabulary
                processor = None
        if processor is None:
            vc = config.vision_config
            tile = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
            processor = build_internvl3_processor(image_seq_length=int(config.image_seq_length),
                                                  tile_size=int(tile))
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch_dtype)   # built in its dtype: no float32 copy first
        try:
            model = family.model_class()(config)
        finally:
            torch.set_default_dtype(prev)
    model = model.to(device=dev, dtype=torch_dtype).eval().requires_grad_(False)
    bundle = VLMBundle(model=model, processor=processor, model_id=model_id, dtype=torch_dtype,
                       device=dev, family=family, spec=family.image_spec(model, processor))
    _WEIGHTLESS[key] = (config, bundle)    # holding the config keeps its id unique
    return bundle


__all__ = ["DEFAULT_MODEL_ID", "MODEL_FLAG", "VLMBundle", "build_weightless_vlm",
           "check_vision_config", "clear_cache", "clear_weightless_cache", "load_vlm", "read_config", "resolve_device",
           "resolve_dtype"]
