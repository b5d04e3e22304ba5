"""The model card (README.md) written beside every trained LoRA, and the optional upload.

The card is what diffusers' LoRA training scripts write (``diffusers.utils.hub_utils``' model
card template and metadata: ``library_name: diffusers``, ``base_model``, ``instance_prompt``,
``widget``, tags from ``populate_model_card``), filled with what this run did: the edit
instruction(s), every reward term with its weight (and the VLM questions), the semantics, the
sampler and LoRA settings, and a sample grid (the last input|output grid the run logged).

``--push_to_hub`` uploads the run folder (LoRA, card, run_config.json, metrics, the sample) with
``huggingface_hub`` to ``--hub_model_id`` (default: <your user>/<run folder name>). Offline, not
logged in, or when the upload fails, one line says why nothing was uploaded; the run still
succeeds (the LoRA is on disk).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

CARD = "README.md"
SAMPLE = "sample_grid.png"
TAGS = ["image-to-image", "diffusers-training", "diffusers", "lora", "flux", "flux-kontext",
        "alignprop", "template:sd-lora"]
# Checkpoints (optimizer state) and tracker logs stay local.
UPLOAD_IGNORE = ["checkpoints/*", "logs/*", "images/*"]
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _reward_table(terms: list[dict]) -> str:
    rows = ["| term | weight | reward | settings |", "|---|---|---|---|"]
    for t in terms:
        settings = {k: v for k, v in t.items()
                    if k not in ("term", "name", "weight", "reward", "resolved", "device")}
        question = (t.get("resolved") or {}).get("prompt")
        if question:
            settings["question"] = question
        text = ", ".join(f"{k}={v}" for k, v in settings.items()).replace("|", "\\|")
        weight = t.get("weight")
        rows.append(f"| {t.get('term', t.get('name', '?'))} | "
                    f"{'' if weight is None else f'{weight:g}'} | {t.get('reward', '')} | {text} |")
    return "\n".join(rows)


def card_text(config: dict[str, Any], rewards: list[dict], repo_id: str | None = None,
              sample: str | None = None) -> str:
    """The README.md of a run (diffusers' template and metadata)."""
    from diffusers.utils.hub_utils import MODEL_CARD_TEMPLATE_PATH, populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    base = config.get("pretrained_model")
    base_model = base if isinstance(base, str) and _HUB_ID.match(base) else None
    prompt = config.get("prompt")
    instruction = (f"one of the instructions in `{Path(config['prompt_file']).name}`"
                   if config.get("prompt_file") else f"`{prompt}`")
    widget = [{"text": prompt or "", "output": {"url": sample}}] if sample else None
    use = repo_id or "<this folder>"
    description = "\n".join([
        f"# AlignProp LoRA for {base}",
        "",
        "A LoRA on the FLUX.1 Kontext transformer, trained with kontext-alignprop by "
        "backpropagating differentiable rewards through the last sampling steps.",
        "",
        f"* Edit instruction: {instruction}",
        f"* Semantics: {config.get('semantics', 'ours')} "
        "(`original`: the original promptable-differentiable-rewards objective)",
        f"* Steps: {config.get('max_train_steps') or config.get('num_epochs')} "
        f"(batch {config.get('train_batch_size')} x accumulation "
        f"{config.get('train_gradient_accumulation_steps')}), learning rate "
        f"{config.get('train_learning_rate')}, LoRA rank {config.get('lora_rank')}",
        f"* Sampler: {config.get('sample_num_steps')} Euler steps, guidance "
        f"{config.get('guidance_scale')}, {config.get('image_width')}x"
        f"{config.get('image_height')}, truncated backprop {config.get('truncated_backprop')}",
        "",
        "## Reward (higher is better; weighted sum of the terms)",
        "",
        _reward_table(rewards),
        "",
        *([f"![sample: input | output]({sample})", ""] if sample else []),
        "## Use",
        "",
        "```python",
        "from diffusers import FluxKontextPipeline",
        "",
        f"pipe = FluxKontextPipeline.from_pretrained({base!r})",
        f"pipe.load_lora_weights({use!r})",
        "```",
    ])
    card = ModelCard.from_template(
        card_data=ModelCardData(license="other", library_name="diffusers", base_model=base_model,
                                instance_prompt=prompt, widget=widget),
        template_path=MODEL_CARD_TEMPLATE_PATH, model_description=description)
    return str(populate_model_card(card, tags=list(TAGS)))


def write_card(out_dir: Path, config: dict[str, Any], rewards: list[dict],
               repo_id: str | None = None) -> Path:
    """README.md (and the sample grid it shows) in ``out_dir``."""
    grids = sorted((out_dir / "images").glob("step_*.png"))
    sample = None
    if grids:
        shutil.copyfile(grids[-1], out_dir / SAMPLE)
        sample = SAMPLE
    path = out_dir / CARD
    path.write_text(card_text(config, rewards, repo_id, sample), encoding="utf-8")
    return path


def push(out_dir: Path, hub_model_id: str | None) -> tuple[str | None, str]:
    """Upload ``out_dir``; returns (url or None, one line saying what happened)."""
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None, (f"--push_to_hub: nothing uploaded: offline mode (HF_HUB_OFFLINE); the run "
                      f"is in {out_dir}: upload it later with `hf upload <repo> {out_dir}`")
    if huggingface_hub.get_token() is None:
        return None, ("--push_to_hub: nothing uploaded: not logged in to the Hugging Face Hub "
                      f"(`hf auth login` or HF_TOKEN); the run is in {out_dir}")
    try:
        api = huggingface_hub.HfApi()
        repo_id = hub_model_id or f"{api.whoami()['name']}/{out_dir.resolve().name}"
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="model",
                                 ignore_patterns=UPLOAD_IGNORE,
                                 commit_message="AlignProp LoRA (kontext-alignprop)")
    except Exception as exc:  # noqa: BLE001 - network/auth/hub errors: the run stays a success
        reason = " ".join(str(exc).split())[:300]
        return None, f"--push_to_hub: nothing uploaded: {type(exc).__name__}: {reason}"
    url = getattr(info, "repo_url", None) or f"https://huggingface.co/{repo_id}"
    return str(url), f"--push_to_hub: uploaded {out_dir} to {url}"


def read_run(out_dir: Path) -> tuple[dict, list]:
    """(config, reward terms) from a run's run_config.json."""
    data = json.loads((out_dir / "run_config.json").read_text())
    return data.get("config", {}), data.get("rewards", [])


__all__ = ["card_text", "write_card", "push", "read_run", "CARD", "SAMPLE", "TAGS"]
