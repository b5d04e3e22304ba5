"""Questions and answer scales for the InternVL reward: the prompt is the user's.

Every task has a built-in default question (``DEFAULT_PROMPTS``) and answer scale; users replace
the question with ``prompt=`` / ``prompt_file=`` and the scale with ``answer_scale=``. A
``prompt`` that is the name of a preset (``rewards/prompt_presets.py``: ``studio``,
``eyes_skin``, ``photoshoot``, ``same_subject``, ...) stands for that preset's question.

Answer scales
-------------
An :class:`AnswerScale` is an ordered list of answer words with numeric values; the score reads
the model's next-token probabilities over exactly these words. Accepted spellings:

* a preset name: ``"digits"`` (0..9), ``"qalign"`` (excellent=4, good=3, fair=2, poor=1, bad=0,
  the 5-level scale of Q-Align), ``"yesno"`` (yes=1, no=0), ``"pair"`` (1=1, 2=0: the first image
  wins), ``"triplet"`` (2=1, 3=0: image 2, the first candidate, wins);
* ``"word=value,word=value,..."`` (e.g. ``"excellent=5,good=4,fair=3,poor=2,bad=1"``);
* ``"w0,w1,w2"`` -- values 0, 1, 2 in the order given (worst first);
* a dict ``{word: value}`` or a list of ``(word, value)`` pairs.

For ``pair`` / ``triplet`` the scale must have two answers: the one with the higher value means
"the first of the two compared images" (image 1 for pair, image 2 for triplet).

Prompt files
------------
``prompt_file`` is a ``.txt`` file (its whole text is the question) or a ``.json`` / ``.yaml`` file
with keys ``prompt`` (required) and optionally ``answer_scale`` and ``answer_prefix``.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .prompt_presets import PRESETS, PromptPreset, preset

TASKS = ("single", "pair", "similarity", "content-similarity", "sharpness", "triplet", "artifact")
# how many images the model sees per sample, and their order
TASK_IMAGES = {"single": 1, "sharpness": 1, "artifact": 1, "similarity": 2,
               "content-similarity": 2, "pair": 2, "triplet": 3}
# tasks whose two compared images are swapped and scored in both orders (debiasing)
COMPARATIVE_TASKS = ("pair", "triplet")

DEFAULT_PROMPTS = {
    "single": (
        "Rate the overall quality and aesthetic appeal of this image on a scale from 0 to 9, "
        "where 0 is very poor and 9 is excellent. Answer with a single digit."),
    "sharpness": (
        "Rate how sharp and in focus this image is on a scale from 0 to 9, where 0 is very "
        "blurry and 9 is perfectly sharp with crisp fine detail. Answer with a single digit."),
    "artifact": (
        "Rate how free this image is of visual artifacts (grid or checkerboard patterns, "
        "banding, noise, distortions, malformed objects) on a scale from 0 to 9, where 0 is "
        "full of artifacts and 9 is completely clean. Answer with a single digit."),
    "similarity": (
        "How similar are the artistic styles of Image 1 and Image 2 (colour palette, "
        "brushwork or rendering, lighting, texture, mood), ignoring what they depict? Rate on a "
        "scale from 0 to 9, where 0 is completely different and 9 is the same style. Answer "
        "with a single digit."),
    "content-similarity": (
        "Do Image 1 and Image 2 show the same content: the same subject or person identity, "
        "objects and layout, ignoring differences in style, colour and rendering? Rate on a "
        "scale from 0 to 9, where 0 is completely different content and 9 is the same "
        "content. Answer with a single digit."),
    "pair": (
        "Which image has higher overall quality and aesthetic appeal, Image 1 or Image 2? "
        "Answer with 1 or 2."),
    "triplet": (
        "Image 1 is a style reference. Which candidate is closer in artistic style to Image 1: "
        "Image 2 or Image 3? Answer with 2 or 3."),
}

# task "artifact" with two example images of the artifact (artifact_refs) shown first
ARTIFACT_EXAMPLES_PROMPT = (
    "Image 1 and Image 2 are examples of an unwanted artifact (for instance a grid, mesh or "
    "tiling pattern, moire, banding, or a repeated texture of dots or lines over the picture). "
    "How free of that kind of artifact is Image 3? Rate on a scale from 0 to 9, where 0 is "
    "covered by such artifacts and 9 is completely clean. Answer with a single digit.")

PRESET_SCALES = {
    "digits": [(str(i), float(i)) for i in range(10)],
    "qalign": [("excellent", 4.0), ("good", 3.0), ("fair", 2.0), ("poor", 1.0), ("bad", 0.0)],
    "yesno": [("yes", 1.0), ("no", 0.0)],
    "pair": [("1", 1.0), ("2", 0.0)],
    "triplet": [("2", 1.0), ("3", 0.0)],
}
DEFAULT_SCALE = {t: "digits" for t in TASKS}
DEFAULT_SCALE.update({"pair": "pair", "triplet": "triplet"})


class PromptWarning(UserWarning):
    """A prompt that probably does not tell the model how to answer."""


@dataclass(frozen=True)
class AnswerScale:
    """Ordered answers with values; ``best``/``worst`` are the highest/lowest valued answers."""

    words: tuple[str, ...]
    values: tuple[float, ...]

    def __post_init__(self):
        if len(self.words) < 2:
            raise ValueError(f"an answer scale needs at least 2 answers, got {list(self.words)}")
        if len(set(self.words)) != len(self.words):
            raise ValueError(f"answer scale has duplicate answers: {list(self.words)}")
        if any(not w.strip() for w in self.words):
            raise ValueError("answer scale contains an empty answer")
        if max(self.values) == min(self.values):
            raise ValueError(f"answer scale values must not all be equal: {self.describe()}")

    @property
    def best(self) -> int:
        return max(range(len(self.values)), key=lambda i: self.values[i])

    @property
    def worst(self) -> int:
        return min(range(len(self.values)), key=lambda i: self.values[i])

    def normalised_values(self) -> list[float]:
        """Values mapped to [0, 1] (worst -> 0, best -> 1): digits 0..9 -> v / 9."""
        lo, hi = min(self.values), max(self.values)
        return [(v - lo) / (hi - lo) for v in self.values]

    def describe(self) -> str:
        return ",".join(f"{w}={v:g}" for w, v in zip(self.words, self.values))


def parse_answer_scale(spec: Any, task: str) -> AnswerScale:
    """Turn any accepted spelling (see module doc) into an :class:`AnswerScale`."""
    if spec is None:
        spec = DEFAULT_SCALE[task]
    if isinstance(spec, AnswerScale):
        scale = spec
    elif isinstance(spec, str):
        text = spec.strip()
        if text in PRESET_SCALES:
            pairs = PRESET_SCALES[text]
        elif "=" in text:
            pairs = []
            for item in text.split(","):
                if "=" not in item:
                    raise ValueError(f"answer scale {spec!r}: item {item!r} is not word=value")
                word, value = item.rsplit("=", 1)
                try:
                    pairs.append((word.strip(), float(value)))
                except ValueError:
                    raise ValueError(f"answer scale {spec!r}: value {value!r} is not a number") from None
        elif "," in text:
            pairs = [(w.strip(), float(i)) for i, w in enumerate(text.split(","))]
        else:
            raise ValueError(
                f"unknown answer scale {spec!r}; use a preset ({', '.join(PRESET_SCALES)}), "
                f"'word=value,...' or 'worst,...,best'")
        scale = AnswerScale(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    elif isinstance(spec, Mapping):
        scale = AnswerScale(tuple(str(k) for k in spec), tuple(float(v) for v in spec.values()))
    elif isinstance(spec, Sequence):
        scale = AnswerScale(tuple(str(p[0]) for p in spec), tuple(float(p[1]) for p in spec))
    else:
        raise TypeError(f"answer_scale must be a str, dict or list of pairs, got {type(spec).__name__}")
    if task in COMPARATIVE_TASKS and len(scale.words) != 2:
        raise ValueError(
            f"task {task!r} compares two images and needs exactly 2 answers (the higher-valued one "
            f"meaning the first compared image wins); got {scale.describe()}")
    return scale


def load_prompt_file(path: str | Path) -> dict:
    """Read a prompt file -> dict with 'prompt' and optional 'answer_scale', 'answer_prefix'."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".json", ".yaml", ".yml"):
        try:
            if suffix == ".json":
                data = json.loads(text)
            else:
                import yaml
                data = yaml.safe_load(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
            raise ValueError(f"cannot parse prompt file {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise ValueError(f"prompt file {path} must contain a mapping with a 'prompt' string")
        unknown = set(data) - {"prompt", "answer_scale", "answer_prefix"}
        if unknown:
            raise ValueError(f"prompt file {path}: unknown keys {sorted(unknown)}; "
                             f"allowed: prompt, answer_scale, answer_prefix")
        return data
    prompt = text.strip()
    if not prompt:
        raise ValueError(f"prompt file {path} is empty")
    return {"prompt": prompt}


def resolve_prompt(task: str, prompt: str | None, prompt_file: str | Path | None,
                   answer_scale: Any) -> tuple[str, AnswerScale, str]:
    """(question, scale, answer_prefix) for a task from the user's options and the defaults."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if prompt is not None and prompt_file is not None:
        raise ValueError("give either prompt or prompt_file, not both")
    prefix = ""
    if prompt_file is not None:
        data = load_prompt_file(prompt_file)
        prompt = data["prompt"]
        prefix = data.get("answer_prefix", "") or ""
        if answer_scale is None:
            answer_scale = data.get("answer_scale")
    if prompt is not None and not str(prompt).strip():
        raise ValueError("prompt is empty")
    if prompt_file is None and prompt is not None:
        named = preset(prompt)  # a preset's name: its question
        if named is not None:
            check_preset_task(named, task)
            prompt = named.prompt
            answer_scale = named.answer_scale if answer_scale is None else answer_scale
    question = str(prompt).strip() if prompt is not None else DEFAULT_PROMPTS[task]
    scale = parse_answer_scale(answer_scale, task)
    check_answer_instruction(question, scale)
    return question, scale, prefix


def check_preset_task(p: PromptPreset, task: str) -> None:
    """Refuse a preset written for other images (a two-image question on one image, ...)."""
    if TASK_IMAGES.get(task) != TASK_IMAGES[p.task] or (
            {task, p.task} & {"pair", "triplet"} and task != p.task):
        raise ValueError(f"prompt preset {p.name!r} is written for task {p.task!r} "
                         f"({TASK_IMAGES[p.task]} image(s)), not {task!r}; presets for "
                         f"{task!r}: {', '.join(n for n, q in PRESETS.items() if q.task == task) or 'none'}")


def check_answer_instruction(question: str, scale: AnswerScale) -> bool:
    """Warn (PromptWarning) unless the question names the best and the worst answer.

    A question such as "Is this image beautiful?" lets the model answer in free text; the
    probabilities of the scale's tokens are then tiny and the score is mostly noise.
    """
    missing = [scale.words[i] for i in (scale.best, scale.worst)
               if not re.search(rf"(?<!\w){re.escape(scale.words[i])}(?!\w)", question, re.I)]
    if missing:
        warnings.warn(
            f"the prompt does not mention the answer(s) {missing} of the answer scale "
            f"({scale.describe()}); add an instruction such as 'Answer with a single digit from "
            f"0 to 9' or the score will be unreliable. Prompt: {question!r}",
            PromptWarning, stacklevel=3)
        return False
    return True


def image_labels(task: str, n: int | None = None) -> list[str]:
    """Text placed before each image in the user turn (the questions refer to these names).

    ``n`` overrides the task's image count (task ``artifact`` with two example images: 3)."""
    n = TASK_IMAGES[task] if n is None else n
    return [""] if n == 1 else [f"Image {i + 1}:" for i in range(n)]
