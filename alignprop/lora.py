"""LoRA on the Kontext transformer with peft; saved and loaded in diffusers format.

The file written is ``pytorch_lora_weights.safetensors`` produced by
``FluxKontextPipeline.save_lora_weights`` (keys ``transformer.<module>.lora_A.weight``
...), so ``FluxKontextPipeline.load_lora_weights(dir)`` loads it in diffusers.
:func:`load_lora` loads a trained LoRA into a pipeline for ``alignprop.generate``: where it
is (:func:`resolve_lora`), whether it fits the transformer (:func:`check_lora_fits`), one
clear error when it does not.
"""
from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

from common.cli import UserError
from common.hub import brief, model_unavailable

from .distributed import full_state, shard_like_model

LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER = "default"           # the adapter training adds (peft's default name)
PIPELINE_ADAPTER = "lora"     # the adapter alignprop.generate loads into a pipeline


def add_lora(transformer, rank: int, alpha: float | None, target_modules: list[str],
             dropout: float = 0.0) -> list[torch.nn.Parameter]:
    """Freeze ``transformer`` and add trainable LoRA adapters; returns the LoRA parameters.

    LoRA weights are kept in fp32 even when the base weights are bf16/fp16, so that
    AdamW updates are not rounded away (as diffusers' training scripts do).
    """
    from peft import LoraConfig

    names = {n for n, _ in transformer.named_modules()}
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"--lora_target_modules: no module of the transformer matches {missing}")
    transformer.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank,
                        lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules=target_modules)
    transformer.add_adapter(config)
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def lora_state_dict(transformer) -> dict[str, torch.Tensor]:
    """peft state dict of the adapter (keys without the adapter name), whole, on CPU.

    Under FSDP2 the LoRA weights are shards: they are all-gathered here, so every
    process must call this (and one of them writes the result).
    """
    from peft.utils import get_peft_model_state_dict


    return full_state(get_peft_model_state_dict(transformer))


def save_lora(transformer, directory: str | Path, dtype: torch.dtype | None = None,
              state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter of ``transformer`` as diffusers ``pytorch_lora_weights.safetensors``.

    ``state`` is the adapter's :func:`lora_state_dict` when already gathered (sharded runs).
    """
    from diffusers import FluxKontextPipeline

    if state is None:
        state = lora_state_dict(transformer)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The adapter config (rank, alpha, targets) goes into the file's metadata so that
    # load_lora_weights rebuilds the same scale alpha / rank (not the default alpha = rank).
    config = transformer.peft_config[ADAPTER].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    FluxKontextPipeline.save_lora_weights(directory, transformer_lora_layers=state,
                                          safe_serialization=True,
                                          transformer_lora_adapter_metadata=config)
    return directory / LORA_FILE


def load_lora_into(transformer, directory: str | Path) -> None:
    """Load a diffusers-format LoRA file into the adapter already on ``transformer``.

    Only ``pytorch_lora_weights.safetensors`` is read (never a pickled ``.bin``); a
    corrupt file or a LoRA of another rank is a one-line ``ValueError`` naming it.
    """
    from diffusers import FluxKontextPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file



    file = Path(directory) / LORA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: LoRA file missing")
    try:
        raw = load_file(str(file))
    except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{file}: corrupt or truncated LoRA file "
                         f"({brief(' '.join(str(exc).split()))})") from None
    rank = transformer.peft_config[ADAPTER].r
    file_ranks = sorted({v.shape[0] for k, v in raw.items() if "lora_A" in k and v.ndim == 2})
    if file_ranks and file_ranks != [rank]:
        raise ValueError(f"{file}: LoRA rank {'/'.join(map(str, file_ranks))} in the file, but "
                         f"--lora_rank is {rank}; resume with --lora_rank {file_ranks[0]}")
    state = FluxKontextPipeline.lora_state_dict(raw)
    state = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    state = convert_unet_state_dict_to_peft(state)
    state = shard_like_model(transformer, state, ADAPTER)  # no-op unless FSDP-sharded
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA in {directory} does not match the model: unexpected keys "
                         f"{unexpected[:5]}")
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()


__all__ = ["add_lora", "save_lora", "load_lora_into", "lora_state_dict", "LORA_FILE"]


class LoraLoadError(UserError):
    """The LoRA cannot be found, read, or does not fit the loaded transformer."""


# --------------------------------------------------------------------------- loading a trained LoRA into a pipeline
def resolve_lora(source: str) -> tuple[str, str | None]:
    """(path or repo id, weight_name) for ``load_lora_weights``.

    Accepts a ``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors``
    (what training writes) or exactly one ``.safetensors`` file, or a hub repo id.
    """
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise LoraLoadError(f"--lora {source}: expected a .safetensors file (diffusers LoRA "
                                "format); pickled .bin/.pt LoRAs are refused for safety")
        return str(path), None
    if path.is_dir():
        if (path / LORA_FILE).is_file():
            return str(path), None
        found = sorted(p.name for p in path.glob("*.safetensors"))
        if len(found) == 1:
            return str(path), found[0]
        if not found:
            raise LoraLoadError(f"--lora {source}: folder has no {LORA_FILE} (nor any other "
                                ".safetensors file); point at the LoRA file or the training output")
        raise LoraLoadError(f"--lora {source}: folder holds several .safetensors files "
                            f"({', '.join(found[:5])}); pass the one you mean")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "~")):
        return source, None  # hub repo id; load_lora_weights reports a missing one
    raise LoraLoadError(f"--lora {source}: no such file or folder")


_LORA_KEY = re.compile(r"^transformer\.(.+)\.lora_(A|B)(?:\.[\w-]+)?\.weight$")


def check_lora_fits(state_dict: dict, transformer, source: str) -> int:
    """Refuse a LoRA whose layers do not exist in, or do not fit, ``transformer``.

    Returns the number of transformer layers the LoRA adapts. Diffusers itself
    only warns when no key matches (and then generates the base model's image),
    and reports a shape mismatch as a bare ``size mismatch for bias``.
    """
    modules = dict(transformer.named_modules())
    layers: dict[str, dict[str, tuple]] = defaultdict(dict)
    for key, value in state_dict.items():
        m = _LORA_KEY.match(key)
        if m:
            layers[m.group(1)][m.group(2)] = tuple(value.shape)
    hint = ("it was probably trained for another model (LoRAs are tied to one base model and "
            "size); check --pretrained_model")
    if not layers:
        sample = ", ".join(list(state_dict)[:2]) or "none"
        raise LoraLoadError(f"--lora {source}: none of its {len(state_dict)} tensors is a LoRA "
                            f"layer of the FLUX transformer (keys look like: {sample}); {hint}")
    missing = [n for n in layers if n not in modules]
    if len(missing) == len(layers):
        raise LoraLoadError(f"--lora {source}: none of its {len(layers)} layers exists in this "
                            f"transformer (e.g. {missing[0]}); {hint}")
    for name, shapes in layers.items():
        mod = modules.get(name)
        if mod is None or not hasattr(mod, "in_features"):
            continue
        base = getattr(mod, "base_layer", mod)
        a, b = shapes.get("A"), shapes.get("B")
        bad_in = a is not None and a[1] != base.in_features and not name.startswith("x_embedder")
        bad_out = b is not None and b[0] != base.out_features
        if bad_in or bad_out:
            raise LoraLoadError(
                f"--lora {source}: layer {name} is {base.in_features}->{base.out_features} in this "
                f"transformer but the LoRA expects {a[1] if a else '?'}->{b[0] if b else '?'}; {hint}")
    if missing:
        print(f"warning: {len(missing)} of {len(layers)} LoRA layers do not exist in this "
              f"transformer and are ignored (e.g. {missing[0]})", file=sys.stderr)
    return len(layers) - len(missing)


def load_lora(pipe, source: str, scale: float = 1.0, adapter_name: str = PIPELINE_ADAPTER) -> int:
    """Load a diffusers-format LoRA into ``pipe`` under ``adapter_name`` at ``scale``.

    Returns the number of transformer layers adapted. Raises :class:`LoraLoadError`
    (one clear message) for a missing file, a non-LoRA file, or a LoRA for another model.
    """
    path, weight_name = resolve_lora(source)
    kwargs = {"weight_name": weight_name} if weight_name else {}
    try:
        state_dict = pipe.lora_state_dict(path, **kwargs)
        if isinstance(state_dict, tuple):
            state_dict = state_dict[0]
    except (OSError, EnvironmentError) as exc:
        if not Path(path).exists():
            raise model_unavailable("the LoRA", path, "--lora", exc) from None
        raise LoraLoadError(f"--lora {source}: cannot read it ({exc})") from None
    except Exception as exc:  # diffusers' format detection, safetensors header errors ...
        raise LoraLoadError(f"--lora {source}: not a LoRA diffusers can read "
                            f"({type(exc).__name__}: {brief(exc)})") from None
    n = check_lora_fits(state_dict, pipe.transformer, source)
    from diffusers.utils import logging as dlogging  # diffusers: heavy, only when loading

    level = dlogging.get_verbosity()
    # silence "No LoRA keys associated to CLIPTextModel": a transformer-only LoRA is normal
    dlogging.set_verbosity_error()
    try:
        pipe.load_lora_weights(path, adapter_name=adapter_name, **kwargs)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise LoraLoadError(f"--lora {source}: does not fit this model "
                            f"({type(exc).__name__}: {brief(exc)})") from None
    finally:
        dlogging.set_verbosity(level)
    if adapter_name not in pipe.get_list_adapters().get("transformer", []):
        raise LoraLoadError(f"--lora {source}: no layer of it was applied to the transformer")
    pipe.set_adapters([adapter_name], adapter_weights=[scale])
    return n
