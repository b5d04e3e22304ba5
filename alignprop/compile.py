"""``--compile``: regional torch.compile of the repeated parts of every model of a run.

Compiling a whole FLUX pipeline takes minutes and recompiles whenever anything outside the
blocks changes; compiling the repeated blocks compiles one block of each kind once and reuses
it for every instance (diffusers' ``compile_repeated_blocks``: PyTorch's "regional
compilation" recipe; FLUX.1-dev on an H100 compiled in 9.6 s instead of 67 s, as fast). What
is compiled:

* the transformer's double- and single-stream blocks (``FluxTransformerBlock``,
  ``FluxSingleTransformerBlock``: diffusers' ``_repeated_blocks``), LoRA layers inside;
* the VAE decoder (one module: it runs once per image, with grad);
* in every reward model, the layers of each list of identical layers (a VLM's vision encoder
  layers and language-model decoder layers; nothing in models without such lists).

Everything else runs eagerly; eager stays the default. Gradient checkpointing re-runs a
compiled block in backward; autocast, random K and the no-grad / grad steps each get their
graph during the first optimizer step (grad mode is part of a graph's guards), and later steps
reuse them: :func:`graphs_compiled` counts the graphs, and the trainer test checks that the
count stops growing after step 1.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch

logger = logging.getLogger("alignprop")


def graphs_compiled() -> int:
    """Graphs torch.compile has produced in this process so far (recompiles included)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def repeated_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Members of every ``nn.ModuleList`` of two or more layers of one class (outermost only)."""
    found: list[torch.nn.Module] = []
    taken: set[int] = set()
    for module in model.modules():
        if id(module) in taken or not isinstance(module, torch.nn.ModuleList):
            continue
        kinds = {type(m) for m in module}
        if len(module) >= 2 and len(kinds) == 1:
            found.extend(module)
            taken.update(id(sub) for m in module for sub in m.modules())
    return found


def compile_transformer(transformer, **options) -> int:
    """The transformer's repeated blocks (diffusers' list); returns how many were compiled."""
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    blocks = ([m for m in transformer.modules() if type(m).__name__ in names] if names
              else repeated_layers(transformer))
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def compile_regions(transformer, vae, reward_models: Iterable[torch.nn.Module] = (),
                    **options) -> dict[str, int]:
    """Compile the run's repeated regions in place; returns {what: count} for the log.

    ``transformer``: the unwrapped transformer (with its LoRA); ``vae``: the pipeline's VAE
    (its decoder is compiled); ``reward_models``: the frozen models the rewards hold.
    """
    done = {"transformer blocks": compile_transformer(transformer, **options)}
    if vae is not None and getattr(vae, "decoder", None) is not None:
        vae.decoder.compile(**options)
        done["vae decoder"] = 1
    layers = 0
    for model in reward_models:
        for layer in repeated_layers(model):
            layer.compile(**options)
            layers += 1
    done["reward model layers"] = layers
    logger.info("--compile: %s", ", ".join(f"{v} {k}" for k, v in done.items()))
    return done


__all__ = ["compile_regions", "compile_transformer", "graphs_compiled", "repeated_layers"]
