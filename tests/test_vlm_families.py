"""The VLM reward on Qwen2.5-VL and Qwen3-VL (built-in tiny models of the real classes):
preprocessing parity with the official processor, scores equal to a hand computation from the
model's logits on the processor's own inputs, pixel gradients, exact pair/triplet antisymmetry
under pmi_null, loading by config (not by name), and two VLMs in one training run."""
import json

import numpy as np
import pytest
import torch

from common.hub import ModelUnavailableError
from rewards.vlm import make_vlm_reward
from rewards.vlm_families.qwen2_5_vl import resized_size
from rewards.vlm_model import load_vlm

QWEN = ["tiny-qwen2.5-vl", "tiny-qwen3-vl"]
TASKS = ["single", "pair", "similarity", "content-similarity", "sharpness", "triplet", "artifact"]


def reward(task="single", model_id="tiny-qwen2.5-vl", **kw):
    kw.setdefault("dtype", "float32")
    kw.setdefault("device", "cpu")
    if task == "triplet":
        kw.setdefault("reference", torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(9)))
    return make_vlm_reward(task, model_id=model_id, **kw)


def photo(h, w, which="chelsea"):
    from PIL import Image
    from skimage import data
    return np.asarray(Image.fromarray(getattr(data, which)()).resize((w, h), Image.BICUBIC))


def as_tensor(arr):
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0


def processor_pixels(bundle, arr):
    from PIL import Image
    out = bundle.processor.image_processor(images=[Image.fromarray(arr)], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("model_id", QWEN)
def test_preprocessing_matches_processor(model_id):
    bundle = load_vlm(model_id, dtype="float32", device="cpu")
    arr = photo(90, 160)                        # needs a resize to the token grid
    ref, grid = processor_pixels(bundle, arr)
    ours, layout = bundle.family.prepare(bundle, as_tensor(arr), {})
    assert tuple(grid[0].tolist()) == layout
    assert ours.shape[1:] == ref.shape              # (patches, C x 2 x P x P)
    diff = (ours[0] - ref).abs()
    # The processor resizes uint8 images (rounded), we resize floats: <= ~2/255/std per value
    # (std 0.27 for Qwen2.5-VL -> 0.03; 0.5 for Qwen3-VL -> 0.016), much less on average.
    assert diff.max() < 0.035 and diff.mean() < 0.01


@pytest.mark.parametrize("model_id", QWEN)
def test_preprocessing_exact_when_no_resize_is_needed(model_id):
    bundle = load_vlm(model_id, dtype="float32", device="cpu")
    f = bundle.spec.factor
    arr = photo(2 * f, 3 * f)                       # already on the grid and inside the budget
    assert resized_size(2 * f, 3 * f, bundle.spec) == (2 * f, 3 * f)
    ref, _ = processor_pixels(bundle, arr)
    ours, _ = bundle.family.prepare(bundle, as_tensor(arr), {})
    torch.testing.assert_close(ours[0], ref, atol=1e-6, rtol=0)


def hand_answer_logprobs(bundle, template, pil_images, words):
    """Reference path: the processor's own inputs (ids, pixels, grids), the model's logits."""
    inputs = bundle.processor(images=pil_images, text=[template], return_tensors="pt")
    with torch.no_grad():
        logits = bundle.model(**inputs).logits[0, -1]
    logp = logits.log_softmax(-1)
    tok = bundle.tokenizer
    out = []
    for w in words:
        ids = [tok.convert_tokens_to_ids(t) for t in (w, "\u0120" + w)]
        out.append(torch.logsumexp(logp[ids], 0))
    return torch.stack(out), inputs


@pytest.mark.parametrize("model_id", QWEN)
def test_scores_equal_hand_computation(model_id):
    from PIL import Image
    bundle = load_vlm(model_id, dtype="float32", device="cpu")
    f = bundle.spec.factor
    # on the token grid the processor does not resize, so its pixels equal ours and the only
    # thing compared is the reward's own reading of the logits
    arr = photo(2 * f, 3 * f)
    for objective in ("expected", "margin"):
        fn = reward("single", model_id, objective=objective)
        lp, inputs = hand_answer_logprobs(bundle, fn.prompt_template, [Image.fromarray(arr)],
                                          [str(d) for d in range(10)])
        # the reward builds the processor's token sequence (placeholders expanded the same way)
        layout = tuple(inputs["image_grid_thw"][0].tolist())
        assert torch.equal(fn.input_ids([layout]), inputs["input_ids"])
        p = lp.softmax(0)
        hand = (p * torch.arange(10.0)).sum() / 9 if objective == "expected" \
            else torch.sigmoid(lp[9] - lp[0])
        score, _ = fn(as_tensor(arr), None, None)
        torch.testing.assert_close(score[0], hand, atol=1e-5, rtol=0)
    # pair, both orders (read from the processor's inputs for (A, B) and (B, A))
    a, b = photo(2 * f, 3 * f), photo(2 * f, 3 * f, "astronaut")
    fn = reward("pair", model_id)
    lp_ab, _ = hand_answer_logprobs(bundle, fn.prompt_template,
                                    [Image.fromarray(a), Image.fromarray(b)], ["1", "2"])
    lp_ba, _ = hand_answer_logprobs(bundle, fn.prompt_template,
                                    [Image.fromarray(b), Image.fromarray(a)], ["1", "2"])
    hand = 0.5 * (lp_ab.softmax(0)[0] + lp_ba.softmax(0)[1])
    score, _ = fn(as_tensor(a), as_tensor(b), None)
    torch.testing.assert_close(score[0], hand, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_id", QWEN)
@pytest.mark.parametrize("task", TASKS)
def test_every_task_gives_pixel_gradients(model_id, task):
    bundle = load_vlm(model_id, dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 40, 56, generator=g, requires_grad=True)
    inputs = torch.rand(2, 3, 40, 56, generator=g)
    fn = reward(task, model_id, calibration="pmi_null",
                objective="margin" if task in ("pair", "sharpness") else "expected")
    scores, metrics = fn(images, inputs, ["edit"] * 2)
    assert scores.shape == (2,) and all(0.0 <= s <= 1.0 for s in scores.tolist())
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in bundle.model.parameters())
    assert fn.describe()["family"] == bundle.family.name


@pytest.mark.parametrize("model_id", QWEN)
@pytest.mark.parametrize("task", ["pair", "triplet"])
def test_comparative_scores_are_exactly_antisymmetric_under_pmi_null(model_id, task):
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 3, 48, 48, generator=g), torch.rand(3, 3, 48, 48, generator=g)
    for objective in ("expected", "margin"):
        fn = reward(task, model_id, objective=objective, calibration="pmi_null")
        ab, _ = fn(a, b, None)
        ba, _ = fn(b, a, None)
        torch.testing.assert_close(ab + ba, torch.ones(3), atol=1e-6, rtol=0)


def test_orders_share_one_forward_and_null_is_cached():
    fn = reward("pair", "tiny-qwen3-vl", calibration="pmi_null")
    calls = []
    model = fn.bundle.model
    original = model.forward

    def wrapped(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)
    model.forward = wrapped
    try:
        x = torch.rand(2, 3, 48, 48)
        for _ in range(2):
            fn(x, x.flip(-1), None)
        # images of different sizes give the two orders different token counts: two forwards
        fn(torch.rand(2, 3, 48, 48), torch.rand(2, 3, 64, 96), None)
    finally:
        model.forward = original
    # (A,B)+(B,A) in one forward of 2x2 rows, then the null once; a new size signature: one
    # forward per order and one null per order (the gray images keep each order's sizes)
    assert calls == [4, 1, 4, 2, 2, 1, 1]


def test_pixel_budget_options():
    x = torch.rand(1, 3, 200, 300)
    small = reward("single", max_pixels=56 * 56)
    large = reward("single", min_pixels=112 * 112)
    grid_small = small._prepare(x).layout
    grid_large = large._prepare(x).layout
    assert grid_small[1] * grid_small[2] < grid_large[1] * grid_large[2]
    assert small.describe()["max_pixels"] == 56 * 56
    with pytest.raises(ValueError, match="do not apply to Qwen2.5-VL"):
        reward("single", max_tiles=4)
    with pytest.raises(ValueError, match="do not apply to InternVL3"):
        reward("single", model_id="tiny", max_pixels=4096)
    with pytest.raises(ValueError, match="larger than max_pixels"):
        reward("single", min_pixels=20000, max_pixels=10000)


def test_family_comes_from_config_not_name(tmp_path):
    """A saved checkpoint loads through the real path (AutoConfig -> model_type -> adapter)."""
    bundle = load_vlm("tiny-qwen3-vl", dtype="float32", device="cpu")
    path = tmp_path / "InternVL3-looking-name"
    bundle.model.save_pretrained(path)
    bundle.processor.save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen3_vl"
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    loaded = reward("single", str(path))
    assert loaded.bundle.family.name == "Qwen3-VL" and loaded.bundle is not bundle
    torch.testing.assert_close(loaded(x)[0], reward("single", "tiny-qwen3-vl")(x)[0],
                               atol=1e-6, rtol=0)


def test_unsupported_vision_model_is_refused(tmp_path):
    from transformers import LlavaConfig
    LlavaConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="supports InternVL3.*Qwen2.5-VL.*Qwen3-VL"):
        reward("single", str(tmp_path))


def test_missing_model_is_one_line_naming_the_flag():
    with pytest.raises(ModelUnavailableError) as info:
        reward("single", "no-such-org/Qwen2.5-VL-missing", model_flag="--qwen_model_id")
    message = str(info.value)
    assert "--qwen_model_id" in message and "no-such-org/Qwen2.5-VL-missing" in message
    assert "\n" not in message


def test_two_vlms_in_one_run_each_loaded_once():
    from alignprop.reward_flags import RewardFlags, build_reward_from_flags
    flags = RewardFlags(aesthetic_model_type="qwen", sharpness_backend="qwen",
                        similarity_backend="internvl-content", style_reference=None,
                        qwen_model_id="tiny-qwen2.5-vl", internvl_model_id="tiny",
                        internvl_dtype="float32", qwen_dtype="float32")
    composite = build_reward_from_flags(flags, device="cpu")
    terms = {t.name: t.fn for t in composite.terms}
    assert terms["aesthetic"].bundle is terms["sharpness"].bundle
    assert terms["aesthetic"].bundle.family.name == "Qwen2.5-VL"
    assert terms["similarity"].bundle.family.name == "InternVL3"
    images = torch.rand(1, 3, 48, 48, requires_grad=True)
    scores, metrics = composite(images, torch.rand(1, 3, 48, 48), ["edit"])
    scores.sum().backward()
    assert images.grad.abs().sum() > 0 and "aesthetic" in metrics


def test_missing_qwen_model_names_qwen_flag():
    from alignprop.reward_flags import RewardBuildError, RewardFlags, build_reward_from_flags
    flags = RewardFlags(aesthetic_model_type="qwen", qwen_model_id="no-such-org/qwen-vl-missing")
    with pytest.raises(RewardBuildError, match="--qwen_model_id") as info:
        build_reward_from_flags(flags, device="cpu")
    assert "--internvl_model_id" not in str(info.value)


def test_scorer_runs_on_a_qwen_model(tmp_path, capsys):
    import internvl_scorer
    from common.images import save_image
    g = torch.Generator().manual_seed(4)
    for name in ("a.png", "b.png"):
        save_image(torch.rand(3, 40, 56, generator=g), tmp_path / name)
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    assert internvl_scorer.main([a, b, b, a, "--task", "pair", "--model_id", "tiny-qwen3-vl",
                                 "--calibration", "pmi_null", "--format", "json",
                                 "--max_pixels", "4096"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["score"] + rows[1]["score"] == pytest.approx(1.0, abs=1e-6)


def test_vlm_backend_flags_pick_the_model_slot():
    from alignprop.reward_flags import RewardFlags, reward_specs
    flags = RewardFlags(aesthetic_model_type="internvl", similarity_backend="qwen-content",
                        sharpness_backend="qwen", style_reference=None,
                        internvl_model_id="A", qwen_model_id="B", qwen_dtype="bfloat16")
    specs = {s["term"]: s for s in reward_specs(flags, device="cpu")}
    assert (specs["aesthetic"]["model_id"], specs["aesthetic"]["model_flag"]) == \
        ("A", "--internvl_model_id")
    assert specs["similarity"]["model_id"] == specs["sharpness"]["model_id"] == "B"
    assert specs["similarity"]["task"] == "content-similarity"
    assert specs["sharpness"]["dtype"] == "bfloat16" and specs["aesthetic"]["dtype"] == "float32"
    with pytest.raises(ValueError, match="--style_backend"):
        RewardFlags(style_backend="llava")


def test_training_with_qwen_rewards_updates_the_lora(tmp_path):
    """The trainer CLI with every term on a Qwen VLM: gradients reach the LoRA through it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from alignprop.demo import PHOTOS
    from common.photos import write_photos

    root = Path(__file__).resolve().parents[1]
    photos, out = tmp_path / "photos", tmp_path / "run"
    write_photos(photos, PHOTOS)
    for p in sorted(photos.iterdir())[2:]:
        p.unlink()
    cmd = [sys.executable, str(root / "alignprop_fluxkontext.py"), "--pretrained_model", "tiny",
           "--image_height", "32", "--image_width", "32", "--sample_num_steps", "4",
           "--backprop_steps", "1", "--train_batch_size", "2", "--lora_rank", "4",
           "--train_learning_rate", "1e-2", "--max_train_steps", "2", "--seed", "1",
           "--data_dir", str(photos), "--output_dir", str(out),
           "--aesthetic_model_type", "qwen", "--qwen_model_id", "tiny-qwen2.5-vl",
           "--qwen_dtype", "float32", "--sharpness_backend", "qwen",
           "--sharpness_reward_scale", "1", "--similarity_backend", "qwen-content",
           "--image_reward_scale", "1", "--crispness_weight", "0"]  # only Qwen terms
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(root))
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for term in ("aesthetic", "sharpness", "similarity"):
        assert all(0.0 < r[f"train/{term}"] < 1.0 for r in rows)
    assert not any(k.startswith("train/crispness") for k in rows[0])
    assert all(r["train/grad_norm"] > 0 for r in rows)  # so every gradient came through Qwen
    rewards = json.loads((out / "run_config.json").read_text())["rewards"]
    families = {r["term"]: r["resolved"]["family"] for r in rewards if "resolved" in r}
    assert families == {"aesthetic": "Qwen2.5-VL", "sharpness": "Qwen2.5-VL",
                        "similarity": "Qwen2.5-VL"}
    lora = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())
