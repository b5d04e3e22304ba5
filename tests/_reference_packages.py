"""Import the reference packages of the parity tests without running their ``__init__``.

``image-reward`` and ``hpsv2`` are installed with ``--no-deps`` (requirements-nodeps.txt):
their ``__init__`` imports their training/evaluation scripts' dependencies (``datasets``,
``clip``, ``clint``) that we do not need, so we import only the model modules, the parts
the parity tests compare against. ``image-reward``'s BLIP text encoder imports three helpers
from ``transformers.modeling_utils`` that transformers 5 moved or removed; they are put back
here (same code, from ``transformers.pytorch_utils``) before its import, and its
transformers-4 ``init_weights`` call is mapped to what it did then.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import torch


def _stub_packages(top: str, subpackages: tuple[str, ...]) -> None:
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise ImportError(f"reference package {top!r} is not installed (requirements-nodeps.txt)")
    root = os.path.dirname(spec.origin)
    for name in (top, *subpackages):
        if name in sys.modules and getattr(sys.modules[name], "__stub__", False):
            continue
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split(".")[1:])]
        module.__stub__ = True
        sys.modules[name] = module


def _find_pruneable_heads_and_indices(heads, n_heads, head_size, already_pruned_heads):
    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        head = head - sum(1 if h < head else 0 for h in already_pruned_heads)
        mask[head] = 0
    mask = mask.view(-1).contiguous().eq(1)
    index = torch.arange(len(mask))[mask].long()
    return heads, index


def _invert_attention_mask(self, mask):
    ext = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    ext = ext.to(dtype=self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min


def _fairscale_stub() -> None:
    """BLIP's ViT imports fairscale's ``checkpoint_wrapper`` and uses it only with gradient
    checkpointing on (never here). We do not install fairscale (unmaintained; its wheel also
    installs a top-level ``benchmarks`` package that would shadow ours): the name is given a
    stand-in that returns the module unchanged."""
    try:
        importlib.import_module("fairscale.nn.checkpoint.checkpoint_activations")
        return
    except ImportError:
        pass
    names = ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint",
             "fairscale.nn.checkpoint.checkpoint_activations")
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
    sys.modules[names[-1]].checkpoint_wrapper = lambda module, *args, **kwargs: module


def imagereward_modules():
    """(ImageReward.ImageReward module, BLIP vit module, BLIP med module) of the package."""
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if not hasattr(mu, name):
            setattr(mu, name, getattr(pu, name))
    if not hasattr(mu, "find_pruneable_heads_and_indices"):
        mu.find_pruneable_heads_and_indices = _find_pruneable_heads_and_indices
    _stub_packages("ImageReward", ("ImageReward.models",))
    _fairscale_stub()
    med = importlib.import_module("ImageReward.models.BLIP.med")
    # Its models call the transformers-4 ``init_weights()`` from __init__, which in
    # transformers 5 also ties weights through attributes ``post_init`` sets up; the old
    # behaviour was just to apply ``_init_weights`` (the tests overwrite weights anyway).
    med.BertPreTrainedModel.init_weights = lambda self: self.apply(self._init_weights)
    # Two mask helpers transformers 5 dropped from PreTrainedModel, as transformers 4 had them.
    if not hasattr(med.BertPreTrainedModel, "invert_attention_mask"):
        med.BertPreTrainedModel.invert_attention_mask = _invert_attention_mask
    if not hasattr(med.BertPreTrainedModel, "get_head_mask"):
        med.BertPreTrainedModel.get_head_mask = lambda self, head_mask, n: [None] * n
    return (importlib.import_module("ImageReward.ImageReward"),
            importlib.import_module("ImageReward.models.BLIP.vit"), med)


def hpsv2_open_clip():
    """The copy of open_clip bundled in the hpsv2 package (model + transform modules).

    Its ``__init__`` builds a tokenizer from a BPE file the hpsv2 wheel does not ship, so
    that package is stubbed too (HPSv2 uses the standard CLIP vocabulary, tested elsewhere).
    """
    _stub_packages("hpsv2", ("hpsv2.src", "hpsv2.src.open_clip"))
    return (importlib.import_module("hpsv2.src.open_clip.model"),
            importlib.import_module("hpsv2.src.open_clip.transform"))
