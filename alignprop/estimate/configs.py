"""Real configurations for ``--estimate``: which models a run builds, at what size.

Shipped configurations (``alignprop/configs/``: FLUX.1 Kontext-dev; InternVL3 1B/2B/8B/14B/38B
-hf), a local model folder's own ``config.json`` files, or the built-in ``tiny`` /
``tiny-photo`` models. :func:`build_kontext` builds the pipeline's models from them in the
current default device and dtype -- inside a fake-tensor mode for the estimate, on a GPU with
random weights for ``benchmarks/full_size_step.py``. Every problem with a configuration is
one :class:`EstimateError` line naming the flag and the file.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from common.cli import UserError
from rewards.vlm_families import family_for_tiny
from rewards.vlm_named import named_vlm_dir

from .. import tiny_photo
from ..sampler import MAX_SHIFT, schedule_shift
from ..tiny_kontext import TINY, TINY_PHOTO, build_tiny_pipeline

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
KONTEXT_IDS = {"black-forest-labs/FLUX.1-Kontext-dev": "flux1_kontext_dev.json"}
INTERNVL_IDS = {f"OpenGVLab/InternVL3-{s}-hf": f"internvl3_{s.lower()}_hf.json"
                for s in ("1B", "2B", "8B", "14B", "38B")}
KONTEXT_PARTS = (("transformer", "config.json"), ("vae", "config.json"),
                 ("scheduler", "scheduler_config.json"), ("text_encoder", "config.json"),
                 ("text_encoder_2", "config.json"))


class EstimateError(UserError):
    """The run cannot be estimated (unknown model, broken configuration); one clear line."""


def read_config_file(path: Path, flag: str) -> dict:
    """A configuration file as a dict; one line naming ``flag`` and the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise EstimateError(f"{flag}: {path} is a folder, expected a JSON configuration file")
    if not path.is_file():
        raise EstimateError(f"{flag}: {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise EstimateError(f"{flag}: cannot read {path} ({type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise EstimateError(f"{flag}: {path} is not valid JSON (line {exc.lineno}: "
                            f"{exc.msg})") from None
    if not isinstance(data, dict):
        raise EstimateError(f"{flag}: {path} holds a JSON {type(data).__name__}, expected an "
                            f"object of configuration fields")
    return {k: v for k, v in data.items() if not k.startswith("_") or k == "_class_name"}


def kontext_configs(pretrained: str) -> tuple[dict, str]:
    """{transformer, vae, scheduler, text_encoder, text_encoder_2} config dicts + their source.

    ``cfg["_files"]`` names the file each part came from (for errors at build time).
    """
    if pretrained in (TINY, TINY_PHOTO):
        pipe = build_tiny_pipeline()
        cfg = {"transformer": dict(pipe.transformer.config), "vae": dict(pipe.vae.config),
               "scheduler": dict(pipe.scheduler.config),
               "text_encoder": pipe.text_encoder.config.to_dict(),
               "text_encoder_2": pipe.text_encoder_2.config.to_dict()}
        if pretrained == TINY_PHOTO:  # its own transformer and VAE, tiny's text encoders
            cfg["transformer"] = tiny_photo.transformer_config()
            # the latent shift / scale live in the manifest; they change no shape or cost
            cfg["vae"] = {**tiny_photo.vae_config(), "shift_factor": 0.0, "scaling_factor": 1.0}
            return cfg, "built-in tiny-photo model (alignprop/tiny_photo.py)"
        return cfg, "built-in tiny model"
    local = Path(pretrained).expanduser()
    if local.is_dir():
        cfg, files = {}, {}
        for part, name in KONTEXT_PARTS:
            f = local / part / name
            if not f.exists():
                raise EstimateError(f"--pretrained_model {pretrained}: {f} not found (a diffusers "
                                    f"FLUX Kontext folder has {part}/{name})")
            cfg[part] = read_config_file(f, "--pretrained_model")
            files[part] = str(f)
        cfg["_files"] = files
        return cfg, f"{local} (its config files)"
    if local.exists():
        raise EstimateError(f"--pretrained_model {pretrained}: a file, expected a diffusers "
                            f"FLUX Kontext folder (transformer/, vae/, scheduler/ ...)")
    if pretrained in KONTEXT_IDS:
        data = json.loads((CONFIG_DIR / KONTEXT_IDS[pretrained]).read_text())
        return ({k: v for k, v in data.items() if not k.startswith("_")},
                f"{pretrained} (alignprop/configs/{KONTEXT_IDS[pretrained]})")
    raise EstimateError(f"--pretrained_model {pretrained!r}: no shipped configuration; pass a local "
                        f"diffusers directory (only its config.json files are read) or one of "
                        f"{sorted(KONTEXT_IDS)}, 'tiny' or 'tiny-photo'")


def check_size(height: int, width: int, cfg: dict,
               flag: str = "--image_height/--image_width") -> None:
    """Refuse sizes the model's sampler cannot schedule, before anything is built (one line).

    FLUX's resolution shift ``mu`` grows linearly with the number of image tokens and the
    schedule takes ``exp(mu)`` in float32: past ~520k tokens (between 8192 and 16384 px a
    side for FLUX.1) it overflows, in training as here (:meth:`alignprop.sampler.KontextSampler._schedule`).
    """
    vae, sched = cfg["vae"], cfg["scheduler"]
    factor = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
    tokens = (height // factor // 2) * (width // factor // 2)
    mu = schedule_shift(tokens, sched)
    if mu > MAX_SHIFT:
        raise EstimateError(f"{flag}: {height}x{width} is {tokens} image tokens for this model; "
                            f"its sampling schedule's resolution shift exp({mu:.0f}) overflows "
                            f"(FLUX.1 Kontext was trained around 1 MP: 4096 tokens)")


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def build_kontext(cfg: dict, tracker=None, with_text: bool = True) -> dict:
    """The pipeline's models from :func:`kontext_configs` (frozen, eval), in the current default
    device and dtype; ``tracker`` (an :class:`alignprop.fakemem.Tracker`) labels their weights.

    A configuration the model classes cannot build from is one :class:`EstimateError` naming
    its file.
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    label = tracker.label if tracker is not None else (lambda _name: nullcontext())
    files = cfg.get("_files", {})
    skip = ("architectures", "model_type", "transformers_version", "torch_dtype", "dtype")

    def build(part: str, what: str, make):
        try:
            return make()
        except EstimateError:
            raise
        except Exception as exc:  # noqa: BLE001 - any field the class refuses is the config's fault
            where = files.get(part, f"the {part} configuration")
            raise EstimateError(f"--pretrained_model: {where} is not a usable {what} "
                                f"configuration ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:200]})") from None

    models: dict[str, Any] = {}
    with label("weights: transformer"):
        models["transformer"] = build("transformer", "FluxTransformer2DModel", lambda: (
            FluxTransformer2DModel.from_config(_clean(cfg["transformer"])).eval()))
    with label("weights: VAE"):
        models["vae"] = build("vae", "AutoencoderKL", lambda: (
            AutoencoderKL.from_config(_clean(cfg["vae"])).eval()))
    if with_text:
        with label("weights: text encoders (set-up only)"):
            models["text_encoder"] = build("text_encoder", "CLIPTextModel", lambda: CLIPTextModel(
                CLIPTextConfig(**{k: v for k, v in cfg["text_encoder"].items()
                                  if k not in skip})).eval())
            models["text_encoder_2"] = build("text_encoder_2", "T5EncoderModel", lambda: (
                T5EncoderModel(T5Config(**{k: v for k, v in cfg["text_encoder_2"].items()
                                           if k not in skip})).eval()))
    for m in models.values():
        m.requires_grad_(False)
    return models


def scheduler_from(cfg: dict, files: dict | None = None):
    """The flow-matching scheduler of ``cfg`` (one line naming its file when it is broken)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    try:
        return FlowMatchEulerDiscreteScheduler.from_config(_clean(cfg["scheduler"]))
    except Exception as exc:  # noqa: BLE001 - a user's configuration file
        where = (files or cfg.get("_files", {})).get("scheduler", "the scheduler configuration")
        raise EstimateError(f"--pretrained_model: {where} is not a usable "
                            f"FlowMatchEulerDiscreteScheduler configuration "
                            f"({type(exc).__name__}: {exc})") from None


def vlm_config(model_id: str, flag: str = "--internvl_model_id"):
    """(transformers config, source) of a VLM term's model, without weights.

    ``tiny`` names: the tiny model's; a shipped pretrained tiny VLM (``tiny-vlm-photo``): its
    folder under ``rewards/assets``; a local folder: its ``config.json``; a shipped InternVL3
    id: ``alignprop/configs/``. Anything else is one line (nothing is downloaded).
    """
    from transformers import AutoConfig

    tiny = family_for_tiny(model_id)
    if tiny is not None:
        model, _ = tiny.build_tiny()
        return model.config, f"built-in {model_id} model"
    named = named_vlm_dir(model_id)          # tiny-vlm-photo: its shipped folder
    local = named if named is not None else Path(model_id).expanduser()
    if local.is_dir():
        f = local / "config.json"
        data, source = read_config_file(f, flag), str(f)
    elif local.exists():
        raise EstimateError(f"{flag} {model_id}: a file, expected a model folder holding "
                            f"config.json")
    elif model_id in INTERNVL_IDS:
        data = read_config_file(CONFIG_DIR / INTERNVL_IDS[model_id], flag)
        source = f"{model_id} (alignprop/configs/{INTERNVL_IDS[model_id]})"
    else:
        raise EstimateError(f"{flag} {model_id!r}: no shipped configuration; pass a local "
                            f"folder holding its config.json, or one of {sorted(INTERNVL_IDS)}")
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise EstimateError(f"{flag}: {source} has no model_type (a transformers config.json "
                            f"names its model family)")
    fields = {k: v for k, v in data.items() if k not in ("architectures", "model_type",
                                                         "_class_name", "transformers_version")}
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except Exception as exc:  # noqa: BLE001 - a user's configuration file
        raise EstimateError(f"{flag}: {source} is not a usable configuration "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    return config, source


internvl_config = vlm_config    # the name before any VLM family could be estimated

__all__ = ["CONFIG_DIR", "EstimateError", "INTERNVL_IDS", "KONTEXT_IDS",
           "build_kontext", "check_size", "internvl_config", "kontext_configs",
           "read_config_file", "scheduler_from", "vlm_config"]
