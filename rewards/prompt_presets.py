"""Named questions for the original project's use cases (portrait and studio photography).

Give a preset's name where a question is expected (``--aesthetic_prompt studio`` in training,
``--prompt studio`` in ``internvl_scorer.py``, ``prompt="studio"`` in Python);
``internvl_scorer.py --list_prompts`` shows them. The wording is ours; the use cases are the
original's: studio-photograph quality, sharpness of eyes and skin, "same photoshoot" style,
and same person / clothes / logos for content. Each question states its answer scale, and each
preset says which task (which images, in which order) it is written for.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptPreset:
    name: str
    task: str            # the task whose images the question talks about
    use: str             # one line for --list_prompts
    prompt: str
    answer_scale: str = "digits"


PRESETS: dict[str, PromptPreset] = {p.name: p for p in (
    PromptPreset(
        "studio", "single", "studio-photograph quality (aesthetic term)",
        "Judge this picture as a professional portrait or product photographer would. Does it "
        "look like a photograph taken in a professional studio: soft, controlled light, a "
        "high-end camera, high resolution, natural skin and materials, with no digital "
        "artifacts and no painted or illustrated look? Answer with a single digit from 0 to 9, "
        "where 0 means not at all (amateur, artificial or painterly) and 9 means a flawless "
        "professional studio photograph."),
    PromptPreset(
        "eyes_skin", "sharpness", "sharpness of eyes, skin, hair and product detail",
        "How sharp is the subject of this photograph? Look where sharpness matters: the eyes "
        "of a person, skin texture and single hairs, or for a product its fabric, texture and "
        "logos. A background that is soft on purpose (shallow depth of field) is fine. Answer "
        "with a single digit from 0 to 9, where 0 means the subject is blurry or out of focus "
        "and 9 means eyes, skin and fine details are crisp."),
    PromptPreset(
        "photoshoot", "similarity", "same-photoshoot style consistency (style term)",
        "Could Image 1 and Image 2 come from the same photoshoot, by the same photographer, for "
        "the same magazine? Compare only the style: the lighting, the background, and the "
        "colours (brightness, saturation, contrast); ignore who or what is shown. Answer with "
        "a single digit from 0 to 9, where 0 means clearly different shoots and 9 means the "
        "same shoot."),
    PromptPreset(
        "same_subject", "content-similarity", "same person, clothes and logos (content term)",
        "Do Image 1 and Image 2 show the same subject? Check the person's identity, their "
        "clothes and the fabric details, the objects and their arrangement, and any text or "
        "logos. Ignore lighting, colour grading, background, reflections and image quality. "
        "Answer with a single digit from 0 to 9, where 0 means a different subject and 9 means "
        "exactly the same person, clothes and logos."),
    PromptPreset(
        "studio_pair", "pair", "which of two images is the better studio photograph",
        "Which of the two pictures looks more like a professional studio photograph (soft, "
        "controlled light, high resolution, no digital artifacts, no painted look): Image 1 or "
        "Image 2? Answer with 1 or 2.", "pair"),
    PromptPreset(
        "photoshoot_triplet", "triplet", "which candidate matches the reference's photoshoot",
        "Image 1 is the reference. Which candidate could come from the same photoshoot as "
        "Image 1 (same lighting, background and colours; ignore who or what is shown): Image 2 "
        "or Image 3? Answer with 2 or 3.", "triplet"),
)}


def preset(name: str) -> PromptPreset | None:
    return PRESETS.get(name.strip().lower()) if isinstance(name, str) else None


def listing() -> str:
    """Every preset: name, task, answer scale, use and question (for --list_prompts)."""
    lines = []
    for p in PRESETS.values():
        lines.append(f"{p.name}  (task {p.task}, answers {p.answer_scale}): {p.use}")
        lines.append(f"    {p.prompt}")
    return "\n".join(lines)


__all__ = ["PromptPreset", "PRESETS", "preset", "listing"]
