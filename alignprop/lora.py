"""LoRA on the Kontext transformer with peft; saved and loaded in diffusers format.

The file written is ``pytorch_lora_weights.safetensors`` produced by
``FluxKontextPipeline.save_lora_weights`` (keys ``transformer.<module>.lora_A.weight``
...), so ``FluxKontextPipeline.load_lora_weights(dir)`` loads it in diffusers.
"""
from __future__ import annotations

from pathlib import Path

import torch

LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER = "default"


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
    """peft state dict of the adapter (keys without the adapter name), on CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(transformer).items()}


def save_lora(transformer, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the adapter of ``transformer`` as diffusers ``pytorch_lora_weights.safetensors``."""
    from diffusers import FluxKontextPipeline

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

    from rewards.hub import brief

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
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA in {directory} does not match the model: unexpected keys "
                         f"{unexpected[:5]}")
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()


__all__ = ["add_lora", "save_lora", "load_lora_into", "lora_state_dict", "LORA_FILE"]
