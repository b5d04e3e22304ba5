"""The original project's InternVL scorer, read the way its code read it (``--semantics original``).

:class:`VLMReward` with the original scoring rules (docs/original_mode.md, "VLM terms"; values
checked against the original's own code in ``tests/data/original_reference.json``):

* pixels: one tile, bilinear resize (no antialias) of the whole image to the vision tower's
  ``image_size``, normalised with the processor's mean/std;
* chat: the images first, then the question, ``apply_chat_template(add_generation_prompt=True,
  add_vision_id=True)``; no image labels, no answer prefix;
* answers: the last token of ``"w"``, ``" w"`` and ``"\\nw"`` for each answer word;
* log-probs: full-vocabulary ``log_softmax(logits / temperature)`` at the last position;
  ``pmi_null`` subtracts a grey image's (every image grey, examples included) token by token,
  THEN the answer groups are formed: ``P_w ~ sum_{ids of w} exp(calibrated log-prob)``;
* expected = ``sum P v`` (digits: ``v = g / 9``); margin = ``sigmoid((lse_best - lse_worst) /
  margin_temp)``; ``entropy_bonus`` adds ``bonus * H(P)`` in nats (rating tasks only);
* pair / triplet: ``0.5 * (sigmoid(m_a / margin_temp) + 1 - sigmoid(m_b / margin_temp))``
  whatever the objective, the swapped order ``b`` NOT calibrated; triplet answers are 1 / 2
  (1 = image 2, the first candidate);
* image order: a style reference comes FIRST (``[reference, output]``); example images and a
  reference are resized (bilinear) to the output's size before they are shown.

Only InternVL (the original's model family) is supported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.images import ImageLoadError

from .base import batch_mean
from .vlm import (CALIBRATIONS, OBJECTIVES, TASKS, ScoreOutput, SlotPixels, VLMReward,
                  _check_choice, _load_reference)
from .vlm_model import MODEL_FLAG, build_weightless_vlm, load_vlm
from .vlm_prompts import ARTIFACT_EXAMPLES_PROMPT, COMPARATIVE_TASKS, resolve_prompt

RATING_TASKS = ("single", "sharpness", "artifact", "similarity", "content-similarity")
# The original's CLI loaded every image file stretched to this size (width, height).
ORIGINAL_LOAD_SIZE = (512, 1024)


def original_answer_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """For each answer word, the last token id of "w", " w" and "\\nw" (duplicates dropped)."""
    out = []
    for word in words:
        ids: list[int] = []
        for text in (word, " " + word, "\n" + word):
            toks = tokenizer.encode(text, add_special_tokens=False)
            if toks and toks[-1] not in ids:
                ids.append(toks[-1])
        if not ids:
            raise ValueError(f"answer {word!r} has no token in this tokenizer")
        out.append(ids)
    return out


def load_image_original(path: str | Path) -> torch.Tensor:
    """(3, 1024, 512) in [0, 1]: an image file as the original scorer loaded it (RGB, stretched
    with PIL's default bicubic resampling to 512 wide x 1024 high)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize(ORIGINAL_LOAD_SIZE)
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"{path}: {exc}") from None
    arr = np.asarray(img).astype("float32") / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class OriginalVLMReward(VLMReward):
    """A :class:`VLMReward` that scores as the original code did (see the module doc)."""

    semantics = "original"

    def __init__(self, task: str, bundle, prompt: str, answer_scale, **kw):
        if bundle.family.name != "InternVL3":
            raise ValueError(f"the original semantics are defined for InternVL3 (the original's "
                             f"model); {bundle.model_id!r} is {bundle.family.name}")
        kw["answer_prefix"] = ""
        kw["max_tiles"] = 1
        super().__init__(task, bundle, prompt, answer_scale, **kw)
        self.answer_ids = original_answer_ids(bundle.tokenizer, answer_scale.words)
        cfg = bundle.model.config.vision_config
        size = cfg.image_size
        self.tile = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    # ------------------------------------------------------------------ prompt and pixels
    def _render_template(self) -> str:
        content = [{"type": "image"} for _ in range(self.n_images)]
        content.append({"type": "text", "text": self.prompt})
        text = self.bundle.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True,
            add_vision_id=True, tokenize=False)
        image_token = self.family.image_token(self.bundle.processor)
        if text.count(image_token) != self.n_images:
            raise ValueError(f"the chat template of {self.bundle.model_id!r} produced "
                             f"{text.count(image_token)} image placeholders for {self.n_images} "
                             f"images")
        return text

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.bundle.spec
        mean = x.new_tensor(spec.image_mean).view(1, 3, 1, 1)
        std = x.new_tensor(spec.image_std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.bundle.dtype)

    def _prepare(self, x: torch.Tensor) -> SlotPixels:
        x = F.interpolate(x.to(self.bundle.device).float(), size=self.tile, mode="bilinear",
                          align_corners=False)
        return SlotPixels(self._normalise(x)[:, None], 1)

    _tiles = _prepare

    # ------------------------------------------------------------------ model access
    def _full_logprobs(self, slots: Sequence[SlotPixels]) -> torch.Tensor:
        """(R, V) log-softmax of the last position's logits / temperature."""
        out = self.bundle.model(**self.model_kwargs(slots), logits_to_keep=1)
        self.num_forwards += 1
        logits = out.logits[:, -1]
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits.float().log_softmax(-1)

    def _null(self, slots: Sequence[SlotPixels]) -> torch.Tensor:
        """(1, V) log-probs with every image grey (0.5), cached per layout."""
        key = (self.prompt_template, tuple(s.layout for s in slots))
        if key not in self._null_cache:
            grey = [SlotPixels(self._normalise(torch.full((1, 3, *self.tile), 0.5,
                                                          device=self.bundle.device))[:, None],
                               s.layout) for s in slots]
            with torch.no_grad():
                self._null_cache[key] = self._full_logprobs(grey).detach()
        return self._null_cache[key]

    def _group(self, logp: torch.Tensor) -> torch.Tensor:
        """(R, K) log of the summed probability of each answer's ids."""
        return torch.stack([logp[:, ids].logsumexp(-1) for ids in self.answer_ids], dim=-1)

    # ------------------------------------------------------------------ scoring
    def score_slots(self, slots: Sequence[torch.Tensor]) -> ScoreOutput:
        if len(slots) != self.n_images:
            raise ValueError(f"task {self.task!r} needs {self.n_images} image(s) per sample, "
                             f"got {len(slots)}")
        for k, x in enumerate(slots):
            if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
                raise ValueError(f"image {k + 1} must be a float (B,3,H,W) tensor in [0,1], "
                                 f"got {tuple(x.shape)} {x.dtype}")
        prepared = [self._prepare(x) for x in slots]
        logp = self._full_logprobs(prepared)
        if self.calibration == "pmi_null":
            logp = logp - self._null(prepared).to(logp.device)
        group = self._group(logp)
        s = self.answer_scale
        metrics: dict[str, float] = {}
        if self.task in COMPARATIVE_TASKS:
            i, j = (0, 1) if self.task == "pair" else (1, 2)
            swapped = list(prepared)
            swapped[i], swapped[j] = prepared[j], prepared[i]
            group_b = self._group(self._full_logprobs(swapped))     # not calibrated
            m_a = group[:, s.best] - group[:, s.worst]
            m_b = group_b[:, s.best] - group_b[:, s.worst]
            score = 0.5 * (torch.sigmoid(m_a / self.margin_temp)
                           + 1.0 - torch.sigmoid(m_b / self.margin_temp))
            probs = [group.softmax(-1), group_b.softmax(-1)]
            logps = [group, group_b]
            metrics["position_bias"] = batch_mean(torch.sigmoid(m_a) + torch.sigmoid(m_b) - 1.0)
        else:
            p = group.exp()
            p = p / (p.sum(-1, keepdim=True) + 1e-12)
            expected = p @ self._values.to(p.device)
            if self.objective == "expected":
                score = expected
            else:
                score = torch.sigmoid((group[:, s.best] - group[:, s.worst]) / self.margin_temp)
            entropy = -(p.clamp_min(1e-12).log() * p).sum(-1)
            if self.entropy_bonus:
                score = score + self.entropy_bonus * entropy
            probs, logps = [p], [group]
            metrics.update(expected=batch_mean(expected), entropy=batch_mean(entropy))
        metrics["p_best"] = batch_mean(torch.stack([q[:, s.best] for q in probs]))
        return ScoreOutput(scores=score, probs=[q.detach() for q in probs],
                           logprobs=[lp.detach() for lp in logps], metrics=metrics,
                           orders=["AB", "BA"] if len(probs) == 2 else [])

    def slots_for(self, images: torch.Tensor, inputs: torch.Tensor | None) -> list[torch.Tensor]:
        h, w = images.shape[-2:]

        def sized(x: torch.Tensor) -> torch.Tensor:
            x = x.to(images.device, images.dtype)
            if tuple(x.shape[-2:]) != (h, w):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            return x.expand(images.shape[0], -1, -1, -1)

        if self.examples:
            return [sized(e) for e in self.examples] + [images]
        if self.task == "similarity" and self.reference is not None:
            return [sized(self.reference), images]
        if self.task == "triplet" and self.reference is not None:
            return [sized(self.reference), *super().slots_for(images, inputs)[1:]]
        return super().slots_for(images, inputs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "semantics": "original", "max_tiles": 1}


def _reference_tensor(ref: Any) -> Any:
    """A path is loaded as the original loaded it (512 x 1024 stretch); tensors are kept."""
    if isinstance(ref, (str, Path)):
        return load_image_original(ref), str(ref)
    return ref, None


def make_original_vlm_reward(task: str = "single", model_id: str = "OpenGVLab/InternVL3-14B-hf",
                             dtype: Any = "bfloat16", device: Any = None, prompt: str | None = None,
                             prompt_file: str | Path | None = None, answer_scale: Any = None,
                             objective: str = "expected", calibration: str = "pmi_null",
                             temperature: float = 1.0, entropy_bonus: float = 0.0,
                             reference: Any = None, trust_remote_code: bool = False,
                             model_flag: str = MODEL_FLAG, margin_temp: float = 1.0,
                             artifact_refs: Sequence[Any] = (), pretrained: bool = True,
                             config: Any = None) -> OriginalVLMReward:
    """The original's InternVL reward for ``task`` (options as :func:`rewards.vlm.make_vlm_reward`;
    ``entropy_bonus`` is the original's ``entropy_coef``, in nats). Triplet answers default to
    "1" / "2" as in the original. ``pretrained=False`` with ``config``: no weights (as
    :func:`rewards.vlm.make_vlm_reward`)."""
    _check_choice("task", task, TASKS)
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("calibration", calibration, CALIBRATIONS)
    if artifact_refs and (len(artifact_refs) != 2 or task != "artifact"):
        raise ValueError("artifact_refs takes two example images, with task 'artifact'")
    if artifact_refs and prompt is None and prompt_file is None:
        prompt = ARTIFACT_EXAMPLES_PROMPT
    if task == "triplet" and answer_scale is None:
        answer_scale = "pair"
    question, scale, _ = resolve_prompt(task, prompt, prompt_file, answer_scale)
    examples, sources = [], []
    for r in artifact_refs:
        t, src = _reference_tensor(r)
        t, src2 = _load_reference(t)
        examples.append(t)
        sources.append(src or src2)
    ref, ref_source = None, None
    if reference is not None:
        if task not in ("similarity", "content-similarity", "triplet"):
            raise ValueError(f"reference is used by tasks similarity, content-similarity and "
                             f"triplet, not by {task!r}")
        t, src = _reference_tensor(reference)
        ref, src2 = _load_reference(t)
        ref_source = src or src2
    if pretrained:
        bundle = load_vlm(model_id, dtype=dtype, device=device,
                          trust_remote_code=trust_remote_code, flag=model_flag)
    else:   # the real architecture without weights (--estimate), as make_vlm_reward's
        bundle = build_weightless_vlm(model_id, config, dtype=dtype, device=device,
                                      flag=model_flag)
    return OriginalVLMReward(task, bundle, question, scale, objective=objective,
                             calibration=calibration, temperature=temperature,
                             entropy_bonus=entropy_bonus, reference=ref,
                             reference_source=ref_source, margin_temp=margin_temp,
                             examples=examples, example_sources=sources)


__all__ = ["OriginalVLMReward", "make_original_vlm_reward", "original_answer_ids",
           "load_image_original", "RATING_TASKS", "ORIGINAL_LOAD_SIZE"]
