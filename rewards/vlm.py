"""Promptable VLM reward: a rating question read as next-token probabilities.

Family-neutral: InternVL3, Qwen2.5-VL and Qwen3-VL (and any family with an adapter in
:mod:`rewards.vlm_families`) share everything here; the adapter only says how pixels are
preprocessed, how an image placeholder expands and where the answer is read.

The model sees the task's images and a question ("Rate ... from 0 to 9. Answer with a single
digit."). At the position of the answer we read the log-probabilities of the answer tokens
("0".."9", "1"/"2", or the user's words), optionally calibrate them, renormalise over the answers
and turn them into a score in [0, 1]:

* ``objective="expected"``: expected answer value, normalised so the worst answer is 0 and the
  best is 1 (digits: E[grade] / 9);
* ``objective="margin"``: ``sigmoid(l(best) - l(worst))`` on the calibrated, temperature-scaled
  log-probs (steeper gradients when the model is confident);
* ``calibration="pmi_null"``: subtract the log-probs the model gives a neutral gray image with the
  same prompt and image count/size (pointwise mutual information), removing the model's prior
  for, e.g., "7". Computed once per (prompt, image sizes) and cached;
* ``temperature`` divides the (calibrated) log-probs before renormalising;
* ``entropy_bonus`` adds ``bonus * H(p) / log K`` (keeps the answer distribution from collapsing);
* ``margin_temp`` softens (> 1) or sharpens (< 1) the margin objective: ``sigmoid(margin / T)``.

Task ``artifact`` can show two example images of the artifact before the rated image
(``artifact_refs``); :meth:`VLMReward.trace_layers` reads the answer distribution after every
layer through the LM head (a debugging aid, any family).

Pair/triplet are debiased against position bias by scoring both orders of the two compared images
in one batched forward: ``score = (E(A,B) + 1 - E(B,A)) / 2`` (margin: sigmoid of the mean of the
two order margins), so ``score(A,B) + score(B,A) = 1`` exactly (with ``entropy_bonus=0``).

``shift_views=M`` (M = k*k > 1) scores M copies of every image translated by sub-patch offsets
(k phases of the model's vision patch per axis, reflect padding; :mod:`rewards.vlm_shift`) and
returns the mean score: the grid-locked part of the pixel gradient is averaged over the patch
phases. The images of one sample (the output and its input, a pair) are shifted alike, so a
comparison sees them aligned as without views; the reward's own constant images (style
reference, artifact examples) are not shifted. All views go through the model in one batch.

Gradients flow from the score through the frozen model and the family's torch preprocessing
(``bundle.family.prepare``) to the image pixels.

The prompt is exposed for logging: ``reward.prompt`` (the question), ``reward.prompt_template``
(the full chat-formatted text, image placeholders unexpanded), ``reward.answer_scale`` and
``reward.describe()`` (a JSON-able dict of every option, also returned by ``describe_prompt``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from common.images import load_image

from .base import batch_mean, call_memo
from .vlm_model import DEFAULT_MODEL_ID, MODEL_FLAG, VLMBundle, build_weightless_vlm, load_vlm
from .vlm_prompts import (ARTIFACT_EXAMPLES_PROMPT, COMPARATIVE_TASKS, TASK_IMAGES, TASKS,
                          AnswerScale, image_labels, resolve_prompt)
from .vlm_shift import check_views, patch_size, shift_offsets, shifted_batch

OBJECTIVES = ("expected", "margin")
CALIBRATIONS = ("none", "pmi_null")
NULL_GRAY = 0.5     # the neutral image of pmi_null: uniform mid-gray in [0, 1]


def _memo_of(memo: dict, x: torch.Tensor, key: tuple, make) -> Any:
    """``make()`` for tensor ``x`` once per memo: keyed by ``key``, ``x``'s identity and
    version (an in-place change is a new image) and the grad mode (a value made without grad
    must not reach a differentiable term). ``x`` is kept beside its value, so an entry whose
    id was recycled for another tensor is made again, not returned."""
    full = key + (id(x), x._version, torch.is_grad_enabled())
    hit = memo.get(full)
    if hit is None or hit[0] is not x:
        hit = memo[full] = (x, make())
    return hit[1]


def _check_choice(name: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
    return value


# --------------------------------------------------------------------------- answer tokens
def find_answer_tokens(tokenizer, words: Sequence[str], context: str | None = None
                       ) -> list[list[int]]:
    """Token ids that start each answer: as written, with a leading space, and capitalised.

    A BPE vocabulary may hold "7" and " 7", "yes" and "Yes" as different tokens, and which one
    the model emits depends on the text before it; the probabilities of all of them are summed.
    ``context`` is the text the answer follows (the chat template up to the assistant turn):
    each form is then tokenised after it, exactly as the model sees it. On Qwen2.5's real
    vocabulary, "excellent" right after the assistant prefix's newline is two tokens
    ("ex" + "cellent") while "Excellent" and " excellent" are one each: only single-token
    forms are read. An answer with no single-token form is read by its first token, which
    must then be unique to that answer (otherwise a clear error: e.g. "10" starts like "1"),
    and a warning says so.
    """
    ids: list[list[int]] = []
    multi = []
    prefix_ids = tokenizer.encode(context, add_special_tokens=False) if context else []

    def tokens_of(text: str) -> list[int]:
        if not context:
            return tokenizer.encode(text, add_special_tokens=False)
        full = tokenizer.encode(context + text, add_special_tokens=False)
        if full[:len(prefix_ids)] == prefix_ids:
            return full[len(prefix_ids):]
        return tokenizer.encode(text, add_special_tokens=False)   # merged across the boundary

    for word in words:
        found: list[int] = []
        firsts: list[int] = []
        forms = dict.fromkeys([word, " " + word, word[:1].upper() + word[1:],
                               " " + word[:1].upper() + word[1:]])
        for text in forms:
            toks = tokens_of(text)
            if not toks:
                continue
            if len(toks) == 1:
                found.append(toks[0])
            elif text in (word, " " + word) and tokenizer.decode(toks[:1]).strip():
                firsts.append(toks[0])       # first token is not bare whitespace
        if not found:
            found, multi = firsts, multi + [word]
        if not found:
            raise ValueError(f"answer {word!r} cannot be tokenised into a usable first token")
        ids.append(sorted(set(found)))
    owner: dict[int, str] = {}
    for word, toks in zip(words, ids):
        for t in toks:
            if t in owner:
                raise ValueError(
                    f"answers {owner[t]!r} and {word!r} start with the same token "
                    f"{tokenizer.decode([t])!r}, so the model's next-token probability cannot tell "
                    f"them apart; use answers that are single tokens or start differently")
            owner[t] = word
    if multi:
        warnings.warn(f"answers {multi} are several tokens long; they are scored by the "
                      f"probability of their first token", stacklevel=3)
    return ids


# --------------------------------------------------------------------------- results
@dataclass
class ScoreOutput:
    """Everything one scoring call computed (scores carry gradients; the rest is detached)."""

    scores: torch.Tensor                     # (B,) in [0, 1] (+ entropy bonus)
    probs: list[torch.Tensor]                # per order: (B, K) answer distribution
    logprobs: list[torch.Tensor]             # per order: (B, K) raw answer log-probs
    metrics: dict[str, float] = field(default_factory=dict)
    orders: list[str] = field(default_factory=list)   # "AB" / "BA" for comparative tasks


@dataclass
class SlotPixels:
    """One image slot of a batch, preprocessed by the family adapter (differentiable).

    ``pixels`` has a leading dimension R (rows of the batch); ``layout`` (hashable, the same for
    every row) decides how many image tokens the slot takes: InternVL's tile count, Qwen-VL's
    (t, h, w) patch grid.
    """

    pixels: torch.Tensor
    layout: Any

    @property
    def shape(self):       # rows first, like the tensors this replaces
        return self.pixels.shape


class VLMReward:
    """Callable reward ``fn(images, inputs, prompts) -> (scores[B], metrics)`` for one task.

    Attributes the trainer can log/save: ``task``, ``prompt`` (question text),
    ``prompt_template`` (full chat text with image placeholders), ``answer_scale``
    (:class:`AnswerScale`), ``describe()`` (dict). ``num_forwards`` counts model forwards
    (including the cached pmi_null ones) for cost accounting. ``image_options``: the family's
    image options (InternVL ``max_tiles``; Qwen-VL ``min_pixels``/``max_pixels``).
    """

    def __init__(self, task: str, bundle: VLMBundle, prompt: str, answer_scale: AnswerScale,
                 answer_prefix: str = "", objective: str = "expected", calibration: str = "none",
                 temperature: float = 1.0, entropy_bonus: float = 0.0,
                 reference: torch.Tensor | None = None, reference_source: str | None = None,
                 max_tiles: int | None = None, min_pixels: int | None = None,
                 max_pixels: int | None = None, margin_temp: float = 1.0,
                 examples: Sequence[torch.Tensor] = (), example_sources: Sequence[str] = (),
                 shift_views: int = 1):
        self.task = _check_choice("task", task, TASKS)
        self.shift_views = check_views(shift_views)
        # (dy, dx) of each view: k phases of the vision patch per axis ([(0, 0)]: off)
        self.shift_offsets = (shift_offsets(shift_views, patch_size(bundle.model.config))
                              if shift_views > 1 else [(0, 0)])
        if not (isinstance(margin_temp, (int, float)) and math.isfinite(margin_temp)
                and margin_temp > 0):
            raise ValueError(f"margin_temp must be a positive number, got {margin_temp!r}")
        if examples and (task != "artifact" or len(examples) != 2):
            raise ValueError("two example images (artifact_refs) go with task 'artifact' only")
        self.objective = _check_choice("objective", objective, OBJECTIVES)
        self.calibration = _check_choice("calibration", calibration, CALIBRATIONS)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not (isinstance(entropy_bonus, (int, float)) and math.isfinite(entropy_bonus)):
            raise ValueError(f"entropy_bonus must be a finite number, got {entropy_bonus!r}")
        self.bundle = bundle
        self.family = bundle.family
        options = self.family.check_image_options(
            {"max_tiles": max_tiles, "min_pixels": min_pixels, "max_pixels": max_pixels})
        self.image_options = self.family.resolve_image_options(bundle, options)
        self.prompt = prompt
        self.answer_scale = answer_scale
        self.answer_prefix = answer_prefix
        self.temperature = float(temperature)
        self.entropy_bonus = float(entropy_bonus)
        self.max_tiles = int(self.image_options.get("max_tiles", 1))
        self.reference = reference
        self.reference_source = reference_source
        self.margin_temp = float(margin_temp)
        # the artifact task may show two example images of the artifact first (Images 1, 2)
        self.examples = [e.float() for e in examples]
        self.example_sources = list(example_sources)
        self.n_images = TASK_IMAGES[task] + len(self.examples)
        self._values = torch.tensor(answer_scale.normalised_values(), dtype=torch.float32)
        self.prompt_template = self._render_template()
        # the answer tokens as the model sees them: right after the assistant prefix
        self.answer_ids = find_answer_tokens(bundle.tokenizer, answer_scale.words,
                                             context=self.prompt_template)
        self._ids_cache: dict[tuple, list[int]] = {}
        self._null_cache: dict[tuple, torch.Tensor] = {}
        # device copies made once (a copy per call would make the host wait for the GPU)
        self._on_device: dict[tuple, torch.Tensor] = {}
        self._mask_kwargs: dict[str, Any] | None = None
        self._share: bool | None = None
        # the reward's own images (style reference, artifact examples): their views and, for
        # families that share vision passes, their features, computed once per run
        self._constant_views: dict[tuple, torch.Tensor] = {}
        self._constant_of: dict[int, tuple] = {}
        self._constant_features: dict[tuple, tuple] = {}
        self.num_forwards = 0
        self.vision_passes = 0      # vision-encoder passes (families that share them)

    # ------------------------------------------------------------------ prompt text
    def _render_template(self) -> str:
        content: list[dict] = []
        for label in image_labels(self.task, self.n_images):
            if label:
                content.append({"type": "text", "text": label})
            content.append({"type": "image"})
        content.append({"type": "text", "text": self.prompt})
        text = self.bundle.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
        image_token = self.family.image_token(self.bundle.processor)
        if text.count(image_token) != self.n_images:
            raise ValueError(
                f"the chat template of {self.bundle.model_id!r} produced {text.count(image_token)} "
                f"image placeholders for {self.n_images} images")
        return text + self.answer_prefix

    def input_ids(self, layouts: Sequence[Any]) -> torch.Tensor:
        """(1, L) token ids with each image placeholder expanded as the processor does.

        ``layouts[k]``: image k's layout (InternVL: tile count; Qwen-VL: (t, h, w) grid).
        """
        key = tuple(layouts)
        if key not in self._ids_cache:
            parts = self.prompt_template.split(self.family.image_token(self.bundle.processor))
            text = parts[0]
            for layout, part in zip(layouts, parts[1:]):
                text += self.family.placeholder(self.bundle, layout) + part
            # kept as a list: the image positions below are read from it on the host (also
            # under --estimate's fake tensors, where a tensor's values are unknown)
            self._ids_cache[key] = list(self.bundle.tokenizer(text)["input_ids"])
        return torch.tensor([self._ids_cache[key]], dtype=torch.long)

    def _image_positions(self, layouts: Sequence[Any]) -> list[int]:
        """Indices of the image placeholder tokens in :meth:`input_ids`."""
        self.input_ids(layouts)
        image_id = self.family.image_token_id(self.bundle)
        return [i for i, t in enumerate(self._ids_cache[tuple(layouts)]) if t == image_id]

    def describe(self) -> dict[str, Any]:
        """JSON-able description (saved with a run, shown in logs)."""
        return {
            "task": self.task, "model_id": self.bundle.model_id, "family": self.family.name,
            "prompt": self.prompt,
            "answer_scale": self.answer_scale.describe(), "answer_prefix": self.answer_prefix,
            "prompt_template": self.prompt_template, "objective": self.objective,
            "calibration": self.calibration, "temperature": self.temperature,
            "entropy_bonus": self.entropy_bonus, "max_tiles": self.max_tiles,
            **{k: v for k, v in self.image_options.items() if k != "max_tiles"},
            "reference": self.reference_source, "dtype": str(self.bundle.dtype).replace("torch.", ""),
            "margin_temp": self.margin_temp, "artifact_refs": self.example_sources or None,
            "shift_views": self.shift_views,
        }

    # ------------------------------------------------------------------ model access
    def check_image_size(self, height: int, width: int) -> None:
        """ValueError (saying why) if the family cannot take an image of this size."""
        self.family.check_image_size(self.bundle, height, width, self.image_options)

    def _prepare(self, x: torch.Tensor) -> SlotPixels:
        """(R,3,H,W) in [0,1] -> the family's model inputs for this slot, differentiable."""
        pixels, layout = self.family.prepare(self.bundle, x, self.image_options)
        return SlotPixels(pixels, layout)

    _tiles = _prepare       # the name before families existed

    def _device_copy(self, key: tuple, make) -> torch.Tensor:
        if key not in self._on_device:
            self._on_device[key] = make()
        return self._on_device[key]

    def _device_ids(self, layouts: Sequence[Any]) -> torch.Tensor:
        return self._device_copy(("ids", tuple(layouts)),
                                 lambda: self.input_ids(layouts).to(self.bundle.device))

    def model_kwargs(self, slots: Sequence[SlotPixels]) -> dict[str, Any]:
        """Everything the model's forward takes for these slots (rows = ``slots[k].pixels``)."""
        b = self.bundle
        layouts = [s.layout for s in slots]
        r = slots[0].pixels.shape[0]
        ids = self._device_ids(layouts).expand(r, -1)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
        kwargs.update(self.family.model_inputs(b, ids, [s.pixels for s in slots], layouts))
        return kwargs

    def _forward(self, slots: Sequence[SlotPixels], inner: bool = False):
        """Answer log-probs (R, K) of one model forward; ``slots[k]``: image slot k.

        ``inner=True`` also returns the model's output with its hidden states and attention
        maps, and the ``input_ids`` of the forward."""
        kwargs = self.model_kwargs(slots)
        extra = {"output_hidden_states": True, "output_attentions": True} if inner else {}
        out = self.bundle.model(**kwargs, logits_to_keep=1, **extra)
        self.num_forwards += 1
        if inner:
            return self._answer_logprobs(out.logits), out, kwargs["input_ids"]
        return self._answer_logprobs(out.logits)

    def answer_logprobs(self, slots: Sequence[torch.Tensor], inner: bool = False):
        """(R, K) answer log-probs (over the whole vocabulary) for one order of the images.

        ``slots[k]``: the (R,3,H,W) batch shown as image k+1. The family's preprocessing and one
        model forward, before calibration, temperature and both-order debiasing; differentiable
        with respect to the pixels and, when they require it, the model's weights (this is what
        ``python -m alignprop.pretrain_tiny_vlm`` fits). ``inner=True`` returns
        ``(logprobs, model output with hidden states and attention maps, input_ids)`` (the
        pretraining's auxiliary losses on inner positions; attention maps need the model's
        ``eager`` attention).
        """
        return self._forward([self._prepare(x) for x in slots], inner)

    def _answer_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        logp = logits[:, self.family.answer_index].float().log_softmax(-1)       # (R, V)
        return torch.stack([logp[:, t].logsumexp(-1) for t in self.answer_ids], dim=-1)

    # ------------------------------------------------------------------ shared vision passes
    # Families with ``shares_vision`` (InternVL): each distinct image is encoded once per call
    # -- the output image once for every question of a composite reward and for both orders
    # of a comparison, the input likewise -- and the reward's own constant images (style
    # reference, artifact examples) once per run. The language model then takes embeddings
    # with the features put at the image tokens, exactly what its forward builds from pixels.
    def _constant(self, name: str, image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``image`` (1,3,H,W) as ``like``'s rows, device and dtype; one view per shape, so
        its vision features are recognised and computed once."""
        key = (name, like.device, like.dtype, like.shape[0])
        view = self._constant_views.get(key)
        if view is None:
            view = image.to(like.device, like.dtype).expand(like.shape[0], -1, -1, -1)
            self._constant_views[key] = view
            self._constant_of[id(view)] = key[:3]
        return view

    def _vision(self, x: torch.Tensor, memo: dict) -> tuple[Any, torch.Tensor]:
        """(layout, features (R, image tokens, D)) of slot images ``x``."""
        options = tuple(sorted(self.image_options.items()))
        constant = self._constant_of.get(id(x))
        if constant is not None:
            key = constant + (options,)
            if key not in self._constant_features:
                with torch.no_grad():   # a fixed image: no gradient to carry
                    px, layout = self.family.prepare(self.bundle, x[:1], self.image_options)
                    self._constant_features[key] = (layout,
                                                    self.family.image_features(self.bundle, px))
                self.vision_passes += 1
            layout, feats = self._constant_features[key]
            return layout, feats.expand(x.shape[0], -1, -1)

        def features():
            px, layout = self.family.prepare(self.bundle, x, self.image_options)
            self.vision_passes += 1
            return layout, self.family.image_features(self.bundle, px)

        return _memo_of(memo, x, ("vision", id(self.bundle.model), options), features)

    def _forward_features(self, features: Sequence[torch.Tensor], layouts: Sequence[Any]
                          ) -> torch.Tensor:
        """Answer log-probs (R, K) of one language-model forward on image features."""
        b = self.bundle
        ids = self._device_ids(layouts).expand(features[0].shape[0], -1)
        positions = self._device_copy(("positions", tuple(layouts)), lambda: torch.tensor(
            self._image_positions(layouts), dtype=torch.long, device=b.device))
        embeds = self.family.embed_inputs(b, ids, positions, features)
        out = b.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1,
                      **self._causal_only_mask())
        self.num_forwards += 1
        return self._answer_logprobs(out.logits)

    def _shares_vision(self) -> bool:
        """The family can, and the model is whole: a model sharded with FSDP2
        (``--reward_device shard``) gathers its weights in the hooks of its own forward, which
        the vision pass alone would skip."""
        if self._share is None:
            self._share = self.family.shares_vision and not any(
                hasattr(p, "device_mesh") for p in self.bundle.model.parameters())
        return self._share

    def _causal_only_mask(self) -> dict[str, Any]:
        """One prompt per forward, no padding: the language model's mask is plain causal.

        Given no mask (or an all-ones one) transformers inspects it or the position ids on the
        host to find that out, which makes the host wait for the GPU; a per-layer-type mapping
        of ``None`` says it directly (its SDPA / flash attention then run causal). Only for
        models whose every layer is full attention under those kernels; else nothing is passed.
        """
        if self._mask_kwargs is None:
            config = getattr(self.bundle.model.config, "text_config", self.bundle.model.config)
            types = set(getattr(config, "layer_types", None) or ["full_attention"])
            kernel = getattr(config, "_attn_implementation", None) or ""
            self._mask_kwargs = (
                {"attention_mask": {"full_attention": None}}
                if types == {"full_attention"} and (kernel == "sdpa" or kernel.startswith("flash"))
                else {})
        return self._mask_kwargs

    def _shared_logprobs(self, orders: list, bsz: int) -> list[torch.Tensor]:
        memo = call_memo()
        if memo is None:        # a call on its own: share within it (the two orders)
            memo = {}
        seen = {id(x): self._vision(x, memo) for order in orders for x in order}
        layouts = [[seen[id(x)][0] for x in order] for order in orders]
        if len(orders) == 2 and layouts[0] == layouts[1]:
            # both orders in one language-model forward (rows: AB then BA), as below
            joined = [torch.cat([seen[id(a)][1], seen[id(b)][1]]) for a, b in zip(*orders)]
            return list(self._forward_features(joined, layouts[0]).split(bsz))
        return [self._forward_features([seen[id(x)][1] for x in order], lay)
                for order, lay in zip(orders, layouts)]

    def null_logprobs(self, sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Answer log-probs (K,) for neutral gray images of these sizes; cached."""
        key = (self.prompt_template, tuple(sizes), tuple(sorted(self.image_options.items())))
        if key not in self._null_cache:
            gray = [torch.full((1, 3, h, w), NULL_GRAY) for h, w in sizes]
            # example images are part of the question, not of the answer: they stay
            gray[:len(self.examples)] = [e.cpu() for e in self.examples]
            with torch.no_grad():   # a constant: the calibration offset carries no gradient
                self._null_cache[key] = self._forward([self._prepare(g) for g in gray])[0].detach()
        return self._null_cache[key]

    def _readout(self, logp: torch.Tensor, sizes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(expected, margin logit, probs) from answer log-probs, after calibration/temperature."""
        if self.calibration == "pmi_null":
            logp = logp - self.null_logprobs(sizes).to(logp.device)
        z = logp / self.temperature
        p = z.softmax(-1)
        expected = p @ self._device_copy(("values", p.device), lambda: self._values.to(p.device))
        s = self.answer_scale
        return expected, z[:, s.best] - z[:, s.worst], p

    # ------------------------------------------------------------------ scoring
    def score_slots(self, slots: Sequence[torch.Tensor]) -> ScoreOutput:
        """Score B samples; ``slots[k]`` is the (B,3,H,W) batch shown as image k+1.

        With ``shift_views`` > 1: the mean over the shifted views of each sample (scores,
        answer distributions and log-probs; the metrics are means over views and samples)."""
        self._check_slots(slots)
        if self.shift_views == 1:
            return self._score_once(slots)
        m = len(self.shift_offsets)
        out = self._score_once([self._shifted(x) for x in slots])

        def fold(t: torch.Tensor) -> torch.Tensor:      # (M*B, ...) view-major -> (B, ...)
            return t.reshape(m, -1, *t.shape[1:]).mean(0)

        return ScoreOutput(scores=fold(out.scores), probs=[fold(p) for p in out.probs],
                           logprobs=[fold(lp) for lp in out.logprobs], metrics=out.metrics,
                           orders=out.orders)

    def _shifted(self, x: torch.Tensor) -> torch.Tensor:
        """The shifted views of one slot, view-major (M*B rows). One tensor per image and call
        (memoised in the enclosing ``shared_call``), so the terms of a composite reward asking
        about the same image still share its vision pass; a constant image stays unshifted."""
        rows = len(self.shift_offsets) * x.shape[0]
        constant = self._constant_of.get(id(x))
        if constant is not None:
            like = torch.empty(rows, device=x.device, dtype=x.dtype)
            return self._constant(constant[0], x[:1], like)
        memo = call_memo()
        if memo is None:
            return shifted_batch(x, self.shift_offsets)
        return _memo_of(memo, x, ("shift_views", tuple(self.shift_offsets)),
                        lambda: shifted_batch(x, self.shift_offsets))

    def _check_slots(self, slots: Sequence[torch.Tensor]) -> None:
        if len(slots) != self.n_images:
            raise ValueError(f"task {self.task!r} needs {self.n_images} image(s) per sample, "
                             f"got {len(slots)}")
        bsz = slots[0].shape[0]
        for k, x in enumerate(slots):
            if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
                raise ValueError(f"image {k + 1} must be a float (B,3,H,W) tensor in [0,1], "
                                 f"got {tuple(x.shape)} {x.dtype}")
            if x.shape[0] != bsz:
                raise ValueError(f"image {k + 1} has batch {x.shape[0]}, image 1 has {bsz}")

    def _score_once(self, slots: Sequence[torch.Tensor]) -> ScoreOutput:
        """Score the slots as given (one batch through the model)."""
        bsz = slots[0].shape[0]
        orders = [list(slots)]
        if self.task in COMPARATIVE_TASKS:
            i, j = (0, 1) if self.task == "pair" else (1, 2)
            swapped = list(slots)
            swapped[i], swapped[j] = slots[j], slots[i]
            orders.append(swapped)
        sizes = [[tuple(x.shape[-2:]) for x in order] for order in orders]
        if self._shares_vision():
            logps = self._shared_logprobs(orders, bsz)
        else:
            logps = self._logprobs_from_pixels(orders, bsz)
        return self._score(logps, sizes, orders)

    def _logprobs_from_pixels(self, orders: list, bsz: int) -> list[torch.Tensor]:
        """The model's own forward on pixels (families without shared vision passes)."""
        prepared = [[self._prepare(x) for x in order] for order in orders]
        layouts = [[s.layout for s in order] for order in prepared]
        if len(orders) == 2 and layouts[0] == layouts[1]:
            # both orders through the model in ONE batched forward: rows 0..B-1 are (A, B),
            # rows B..2B-1 are (B, A); same token sequence, so no padding is needed
            joined = [SlotPixels(torch.cat([prepared[0][k].pixels, prepared[1][k].pixels]),
                                 layouts[0][k]) for k in range(self.n_images)]
            logps = list(self._forward(joined).split(bsz))
        else:   # the two compared images take different token counts: one forward each
            logps = [self._forward(order) for order in prepared]
        return logps

    def _score(self, logps: list, sizes: list, orders: list) -> ScoreOutput:
        reads = [self._readout(lp, s) for lp, s in zip(logps, sizes)]
        probs = [r[2] for r in reads]
        k = len(self.answer_scale.words)
        entropy = torch.stack([-(p * p.clamp_min(1e-12).log()).sum(-1) for p in probs]).mean(0) \
            / math.log(k)
        if len(reads) == 1:
            expected, margin = reads[0][0], reads[0][1]
        else:
            # order BA is read from the other image's point of view: 1 - E, -margin
            expected = 0.5 * (reads[0][0] + 1.0 - reads[1][0])
            margin = 0.5 * (reads[0][1] - reads[1][1])
        score = expected if self.objective == "expected" else torch.sigmoid(margin / self.margin_temp)
        if self.entropy_bonus:
            score = score + self.entropy_bonus * entropy
        metrics = {  # 0-dim tensors on the model's device: no host sync while scoring
            "expected": batch_mean(expected),
            "margin": batch_mean(torch.sigmoid(margin.detach() / self.margin_temp)),
            "entropy": batch_mean(entropy),
            "p_best": batch_mean(torch.stack([p[:, self.answer_scale.best] for p in probs])),
        }
        if len(reads) == 2:
            # > 0: the model prefers whichever image comes first (what the debiasing removes)
            metrics["position_bias"] = batch_mean(reads[0][0] + reads[1][0] - 1.0)
        return ScoreOutput(scores=score, probs=[p.detach() for p in probs],
                           logprobs=[lp.detach() for lp in logps], metrics=metrics,
                           orders=["AB", "BA"][:len(orders)] if len(orders) == 2 else [])

    # ------------------------------------------------------------------ layer tracing
    @torch.no_grad()
    def trace_layers(self, slots: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Answer log-probs after every layer, read through the LM head ("logit lens").

        Returns, per order (one, or "AB"/"BA" for pair/triplet), a (B, L+1, K) tensor: row 0
        is the embeddings, row L the final layer (the distribution :meth:`score_slots` reads,
        before calibration and temperature); intermediate hidden states go through the
        language model's final norm first, as the last one already has. Log-probs are
        renormalised over the K answers. Family-neutral: it needs only the model's output
        embeddings and its decoder's ``norm``. A debugging aid: one forward with every hidden
        state kept, no gradients.
        """
        model = self.bundle.model
        head = model.get_output_embeddings()
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        norm = getattr(decoder, "norm", None)
        if head is None:
            raise ValueError(f"{self.bundle.model_id!r} exposes no LM head to read layers through")
        orders = [list(slots)]
        if self.task in COMPARATIVE_TASKS:
            i, j = (0, 1) if self.task == "pair" else (1, 2)
            swapped = list(slots)
            swapped[i], swapped[j] = slots[j], slots[i]
            orders.append(swapped)
        traces = []
        for order in orders:
            prepared = [self._prepare(x) for x in order]
            out = model(**self.model_kwargs(prepared), output_hidden_states=True)
            self.num_forwards += 1
            hidden = out.hidden_states
            rows = []
            for li, h in enumerate(hidden):
                h = h[:, self.family.answer_index]
                if norm is not None and li < len(hidden) - 1:
                    h = norm(h)
                logp = head(h).float().log_softmax(-1)
                ans = torch.stack([logp[:, t].logsumexp(-1) for t in self.answer_ids], dim=-1)
                rows.append(ans.log_softmax(-1))
            traces.append(torch.stack(rows, dim=1))
        return traces

    def slots_for(self, images: torch.Tensor, inputs: torch.Tensor | None) -> list[torch.Tensor]:
        """The images the model sees for this task, in order, from the reward's arguments."""
        def need_inputs():
            if inputs is None:
                raise ValueError(f"task {self.task!r} compares with the input images, but inputs "
                                 f"is None")
            if inputs.shape[0] != images.shape[0]:
                raise ValueError(f"images has batch {images.shape[0]}, inputs has {inputs.shape[0]}")
            return inputs.to(images.device, images.dtype)

        def ref():
            if self.reference is None:
                raise ValueError("task 'triplet' needs reference= (the style reference image), or "
                                 "call score_slots([reference, images, inputs])")
            return self._constant("reference", self.reference, images)

        if self.examples:
            return [self._constant(f"example{i}", e, images)
                    for i, e in enumerate(self.examples)] + [images]
        if self.n_images == 1:
            return [images]
        if self.task in ("similarity", "content-similarity"):
            return [images, ref() if self.reference is not None else need_inputs()]
        if self.task == "pair":
            return [images, need_inputs()]
        return [ref(), images, need_inputs()]            # triplet

    def __call__(self, images: torch.Tensor, inputs: torch.Tensor | None = None,
                 prompts: Sequence[str] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.score_slots(self.slots_for(images, inputs))
        return out.scores, out.metrics


def _load_reference(reference: Any) -> tuple[torch.Tensor, str]:
    if isinstance(reference, (str, Path)):
        return load_image(reference)[None], str(reference)
    if isinstance(reference, torch.Tensor):
        ref = reference.detach()
        if ref.ndim == 3:
            ref = ref[None]
        if ref.ndim != 4 or ref.shape[:2] != (1, 3) or not ref.is_floating_point():
            raise ValueError(f"reference must be an image path or a float (3,H,W) tensor in [0,1], "
                             f"got shape {tuple(reference.shape)}")
        return ref.float(), "<tensor>"
    raise TypeError(f"reference must be an image path or a tensor, got {type(reference).__name__}")


def make_vlm_reward(task: str = "single", model_id: str = DEFAULT_MODEL_ID,
                    dtype: Any = "bfloat16", device: Any = None, prompt: str | None = None,
                    prompt_file: str | Path | None = None, answer_scale: Any = None,
                    objective: str = "expected", calibration: str = "none",
                    temperature: float = 1.0, entropy_bonus: float = 0.0,
                    reference: Any = None, trust_remote_code: bool = False,
                    max_tiles: int | None = None, min_pixels: int | None = None,
                    max_pixels: int | None = None, model_flag: str = MODEL_FLAG,
                    margin_temp: float = 1.0, artifact_refs: Sequence[Any] = (),
                    pretrained: bool = True, config: Any = None,
                    shift_views: int = 1) -> VLMReward:
    """Build the VLM reward for ``task`` (see module doc). Higher score is better.

    ``model_id``: hub id or local directory of any supported family (InternVL3 ``-hf``,
    Qwen2.5-VL, Qwen3-VL; the family is read from its config.json), or a tiny model name
    (``tiny``, ``tiny-qwen2.5-vl``, ``tiny-qwen3-vl``); the loaded model is shared with every
    other reward using the same (model_id, dtype, device). ``model_flag`` is the flag named in
    the error when the model cannot be found.
    ``reference``: image path or (3,H,W) tensor: for ``similarity`` / ``content-similarity`` it
    replaces ``inputs`` as the second image; required for ``triplet``.
    ``max_tiles`` (InternVL): None (default) = as the checkpoint's processor tiles (up to its
    ``max_patches`` tiles + a thumbnail); 1 = one squashed tile per image (cheapest).
    ``min_pixels`` / ``max_pixels`` (Qwen-VL): the pixel budget of the dynamic resolution
    (default: the checkpoint's processor's).
    ``margin_temp``: the margin objective is ``sigmoid(margin / margin_temp)``.
    ``artifact_refs``: two example images (paths or (3,H,W) tensors) of the artifact, shown
    before the rated image in task ``artifact`` (the default question then refers to them).
    ``shift_views``: 1 (default) scores each image as given; k*k scores k x k copies translated
    by sub-patch offsets and returns the mean (module doc, :mod:`rewards.vlm_shift`).
    ``pretrained=False``: the model at its real size without weights, from ``config`` (a hub
    id) or the folder's config.json (:func:`rewards.vlm_model.build_weightless_vlm`; for
    ``--estimate`` under fake tensors).
    """
    _check_choice("task", task, TASKS)
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("calibration", calibration, CALIBRATIONS)
    check_views(shift_views)
    if artifact_refs and len(artifact_refs) != 2:
        raise ValueError(f"artifact_refs takes two example images, got {len(artifact_refs)}")
    if artifact_refs and task != "artifact":
        raise ValueError(f"artifact_refs go with task 'artifact', not {task!r}")
    if artifact_refs and prompt is None and prompt_file is None:
        prompt = ARTIFACT_EXAMPLES_PROMPT
    question, scale, prefix = resolve_prompt(task, prompt, prompt_file, answer_scale)
    examples = [_load_reference(r) for r in artifact_refs]
    ref, ref_source = None, None
    if reference is not None:
        if task not in ("similarity", "content-similarity", "triplet"):
            raise ValueError(f"reference is used by tasks similarity, content-similarity and "
                             f"triplet, not by {task!r}")
        ref, ref_source = _load_reference(reference)
    if pretrained:
        bundle = load_vlm(model_id, dtype=dtype, device=device,
                          trust_remote_code=trust_remote_code, flag=model_flag)
    else:
        bundle = build_weightless_vlm(model_id, config, dtype=dtype, device=device,
                                      flag=model_flag)
    return VLMReward(task, bundle, question, scale, answer_prefix=prefix, objective=objective,
                     calibration=calibration, temperature=temperature,
                     entropy_bonus=entropy_bonus, reference=ref, reference_source=ref_source,
                     max_tiles=max_tiles, min_pixels=min_pixels, max_pixels=max_pixels,
                     margin_temp=margin_temp, examples=[e for e, _ in examples],
                     example_sources=[src for _, src in examples], shift_views=shift_views)


# the names before the reward became family-neutral (same objects)
InternVLReward = VLMReward
make_internvl_reward = make_vlm_reward


def describe_prompt(reward: VLMReward) -> dict[str, Any]:
    """The prompt and options of a built VLM reward (for logs and run metadata)."""
    return reward.describe()


__all__ = ["CALIBRATIONS", "OBJECTIVES", "TASKS", "InternVLReward", "ScoreOutput", "SlotPixels",
           "VLMReward", "describe_prompt", "find_answer_tokens", "make_internvl_reward",
           "make_vlm_reward"]
