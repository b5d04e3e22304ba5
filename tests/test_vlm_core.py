"""InternVL reward on the built-in tiny model: parity with the official processor, hand-computed
scores, gradients, debiasing, pmi_null caching and error handling."""
import json
import warnings

import numpy as np
import pytest
import torch

from common.hub import ModelUnavailableError
from rewards.internvl_model import check_vision_config, load_internvl, preprocess
from rewards.vlm import find_answer_tokens, make_internvl_reward
from rewards.vlm_prompts import PromptWarning, parse_answer_scale

TASKS = ["single", "pair", "similarity", "content-similarity", "sharpness", "triplet", "artifact"]


@pytest.fixture(scope="module")
def bundle():
    return load_internvl("tiny", dtype="float32", device="cpu")


def reward(task="single", **kw):
    kw.setdefault("model_id", "tiny")
    kw.setdefault("dtype", "float32")
    kw.setdefault("device", "cpu")
    if task == "triplet":
        kw.setdefault("reference", torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(9)))
    return make_internvl_reward(task, **kw)


def photo(h, w):
    from PIL import Image
    from skimage import data
    return np.asarray(Image.fromarray(data.chelsea()).resize((w, h), Image.BICUBIC))


def as_tensor(arr):
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize("max_tiles", [1, 4])
def test_preprocessing_matches_processor(bundle, max_tiles):
    from PIL import Image
    arr = photo(90, 160)            # non-square: tiling picks a 2x1 grid + thumbnail
    ref = bundle.processor.image_processor(images=[Image.fromarray(arr)], return_tensors="pt",
                                           crop_to_patches=max_tiles > 1,
                                           max_patches=max_tiles)["pixel_values"]
    ours = preprocess(as_tensor(arr), bundle, max_tiles)
    assert ours.shape == ref.shape == ((3 if max_tiles > 1 else 1), 3, 64, 64)
    diff = (ours - ref).abs()
    # The processor resizes uint8 tensors (two separable passes, each rounded to an integer),
    # we resize floats: differences are up to ~1/255 per pass in [0,1], i.e. <= 2/255/std
    # ~ 0.035 after normalisation, and ~0.5/255/std on average.
    assert diff.max() < 0.035
    assert diff.mean() < 0.01


def test_preprocessing_exact_at_tile_size(bundle):
    from PIL import Image
    arr = photo(64, 64)
    ref = bundle.processor.image_processor(images=[Image.fromarray(arr)], return_tensors="pt",
                                           crop_to_patches=False)["pixel_values"]
    torch.testing.assert_close(preprocess(as_tensor(arr), bundle, 1), ref, atol=1e-6, rtol=0)


def hand_answer_logprobs(bundle, template, pil_images, words):
    """Reference path: the processor's own input_ids/pixel_values, the model's logits."""
    inputs = bundle.processor(images=pil_images, text=[template], return_tensors="pt",
                              crop_to_patches=False)
    with torch.no_grad():
        logits = bundle.model(**inputs).logits[0, -1]
    logp = logits.log_softmax(-1)
    tok = bundle.tokenizer
    out = []
    for w in words:
        ids = [tok.convert_tokens_to_ids(t) for t in (w, "\u0120" + w)]
        out.append(torch.logsumexp(logp[ids], 0))
    return torch.stack(out), inputs


def test_single_score_equals_hand_computation(bundle):
    from PIL import Image
    arr = photo(64, 64)
    for objective in ("expected", "margin"):
        fn = reward("single", objective=objective)
        lp, inputs = hand_answer_logprobs(bundle, fn.prompt_template, [Image.fromarray(arr)],
                                          [str(d) for d in range(10)])
        # the scorer builds the same token sequence as the processor
        assert torch.equal(fn.input_ids([1]), inputs["input_ids"])
        p = lp.softmax(0)
        expected = (p * torch.arange(10.0)).sum() / 9
        hand = expected if objective == "expected" else torch.sigmoid(lp[9] - lp[0])
        score, metrics = fn(as_tensor(arr), None, None)
        torch.testing.assert_close(score[0], hand, atol=1e-5, rtol=0)
        assert metrics["expected"] == pytest.approx(expected.item(), abs=1e-5)


def test_pair_score_equals_hand_computation_both_orders(bundle):
    from PIL import Image
    a, b = photo(64, 64), np.ascontiguousarray(photo(64, 64)[::-1])
    fn = reward("pair")
    lp_ab, _ = hand_answer_logprobs(bundle, fn.prompt_template,
                                    [Image.fromarray(a), Image.fromarray(b)], ["1", "2"])
    lp_ba, _ = hand_answer_logprobs(bundle, fn.prompt_template,
                                    [Image.fromarray(b), Image.fromarray(a)], ["1", "2"])
    hand = 0.5 * (lp_ab.softmax(0)[0] + lp_ba.softmax(0)[1])
    score, _ = fn(as_tensor(a), as_tensor(b), None)
    torch.testing.assert_close(score[0], hand, atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", TASKS)
def test_gradients_reach_pixels_not_parameters(bundle, task):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 40, 56, generator=g, requires_grad=True)
    inputs = torch.rand(2, 3, 40, 56, generator=g)
    fn = reward(task, objective="margin" if task in ("pair", "sharpness") else "expected",
                calibration="pmi_null" if task in ("similarity", "triplet") else "none")
    scores, metrics = fn(images, inputs, ["edit"] * 2)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert all(0.0 <= s <= 1.0 for s in scores.tolist())
    assert set(metrics) >= {"expected", "margin", "entropy", "p_best"}
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in bundle.model.parameters())


@pytest.mark.parametrize("task", ["pair", "triplet"])
@pytest.mark.parametrize("objective", ["expected", "margin"])
def test_comparative_scores_are_antisymmetric(task, objective):
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 3, 48, 48, generator=g), torch.rand(3, 3, 48, 48, generator=g)
    fn = reward(task, objective=objective, calibration="pmi_null")
    ab, m = fn(a, b, None)
    ba, _ = fn(b, a, None)
    torch.testing.assert_close(ab + ba, torch.ones(3), atol=1e-6, rtol=0)
    assert "position_bias" in m


def count_forwards(bundle):
    calls = []
    original = bundle.model.forward

    def wrapped(*args, **kwargs):
        ids = kwargs.get("input_ids")   # the shared-vision path passes embeddings
        calls.append((ids if ids is not None else kwargs["inputs_embeds"]).shape[0])
        return original(*args, **kwargs)
    bundle.model.forward = wrapped
    return calls, lambda: setattr(bundle.model, "forward", original)


def test_pmi_null_is_cached_and_orders_share_one_forward(bundle):
    fn = reward("pair", calibration="pmi_null")
    x = torch.rand(2, 3, 48, 48)
    calls, restore = count_forwards(bundle)
    try:
        for _ in range(3):
            fn(x, x.flip(-1), None)
    finally:
        restore()
    # one forward per call holding both orders (2 x batch 2) + ONE null forward (batch 1)
    assert sorted(calls) == [1, 4, 4, 4]
    assert fn.num_forwards == 4
    # a new image size needs its own neutral image
    calls, restore = count_forwards(bundle)
    try:
        fn(torch.rand(2, 3, 32, 80), torch.rand(2, 3, 32, 80), None)
    finally:
        restore()
    assert sorted(calls) == [1, 4]


def test_pmi_null_changes_scores_by_the_null_log_probs():
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    raw = reward("single")
    cal = reward("single", calibration="pmi_null")
    out_raw, out_cal = raw.score_slots([x]), cal.score_slots([x])
    null = cal.null_logprobs([(48, 48)])
    expected = (out_raw.logprobs[0][0] - null).softmax(-1)
    torch.testing.assert_close(out_cal.probs[0][0], expected, atol=1e-6, rtol=0)


def test_temperature_and_entropy_bonus():
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    base = reward("single").score_slots([x])
    hot = reward("single", temperature=100.0).score_slots([x])
    # a very high temperature flattens the answer distribution towards uniform (score -> 0.5)
    assert (hot.scores - 0.5).abs().max() < (base.scores - 0.5).abs().max()
    assert hot.metrics["entropy"] > base.metrics["entropy"]
    bonus = reward("single", entropy_bonus=0.1).score_slots([x])
    torch.testing.assert_close(bonus.scores, base.scores + 0.1 * bonus.metrics["entropy"],
                               atol=1e-3, rtol=0)


def test_reference_replaces_inputs_for_similarity(tmp_path):
    from common.images import load_image, save_image
    ref = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(5))
    save_image(ref, tmp_path / "ref.png")
    images = torch.rand(2, 3, 40, 40)
    fn = reward("similarity", reference=str(tmp_path / "ref.png"))
    scores, _ = fn(images, None, None)
    loaded = load_image(tmp_path / "ref.png")[None].expand(2, -1, -1, -1)
    direct = reward("similarity").score_slots([images, loaded]).scores
    torch.testing.assert_close(scores, direct)
    assert fn.describe()["reference"].endswith("ref.png")


def test_model_is_shared_between_tasks():
    assert reward("single").bundle is reward("pair").bundle is reward("sharpness").bundle


def test_prompt_is_the_users_and_is_exposed(tmp_path):
    fn = reward("single", prompt="How good is this photo? Answer with one word: excellent, "
                                 "good, fair, poor or bad.", answer_scale="qalign")
    assert fn.prompt.startswith("How good is this photo?")
    assert fn.prompt in fn.prompt_template and "<IMG_CONTEXT>" in fn.prompt_template
    info = fn.describe()
    assert info["prompt"] == fn.prompt
    assert info["answer_scale"] == "excellent=4,good=3,fair=2,poor=1,bad=0"
    json.dumps(info)
    scores, _ = fn(torch.rand(1, 3, 48, 48), None, None)
    assert 0 <= scores.item() <= 1
    # prompt files: .txt is the question; .json can carry the scale and an answer prefix
    (tmp_path / "q.json").write_text(json.dumps(
        {"prompt": "Is the image sharp? Answer yes or no.", "answer_scale": "yesno",
         "answer_prefix": "Answer:"}))
    fj = reward("sharpness", prompt_file=str(tmp_path / "q.json"))
    assert fj.answer_scale.words == ("yes", "no") and fj.prompt_template.endswith("Answer:")
    (tmp_path / "q.txt").write_text("Rate the sharpness from 0 to 9.\n")
    assert reward("sharpness", prompt_file=str(tmp_path / "q.txt")).prompt == \
        "Rate the sharpness from 0 to 9."


def test_prompt_without_answer_instruction_warns():
    with pytest.warns(PromptWarning, match="does not mention"):
        reward("single", prompt="Is this image beautiful?")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptWarning)
        reward("single")                # built-in prompts all name their answers
        reward("pair")


def test_answer_tokens_with_and_without_space(bundle):
    tok = bundle.tokenizer
    ids = find_answer_tokens(tok, ["7", "good"])
    assert ids[0] == sorted({tok.convert_tokens_to_ids("7"), tok.convert_tokens_to_ids("\u01207")})
    assert len(ids[1]) == 2
    with pytest.raises(ValueError, match="start with the same token"):
        find_answer_tokens(tok, ["1", "10"])


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "aesthetics"}, "valid: single, pair, similarity"),
    ({"objective": "mean"}, "valid: expected, margin"),
    ({"calibration": "pmi"}, "valid: none, pmi_null"),
    ({"temperature": 0.0}, "temperature"),
    ({"answer_scale": "1,2,3", "task": "pair"}, "exactly 2 answers"),
    ({"answer_scale": "great"}, "unknown answer scale"),
    ({"reference": torch.rand(3, 8, 8), "task": "single"}, "reference is used by"),
    ({"prompt": "x 0 9", "prompt_file": "q.txt"}, "either prompt or prompt_file"),
])
def test_bad_options_are_refused(kwargs, match):
    kwargs = dict(kwargs)
    task = kwargs.pop("task", "single")
    with pytest.raises(ValueError, match=match):
        reward(task, **kwargs)


def test_wrong_image_count_and_missing_inputs():
    fn = reward("pair")
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="needs 2 image"):
        fn.score_slots([x])
    with pytest.raises(ValueError, match="inputs is None"):
        fn(x, None, None)
    with pytest.raises(ValueError, match="batch"):
        fn(x, x[:1], None)
    with pytest.raises(ValueError, match="triplet' needs reference"):
        make_internvl_reward("triplet", model_id="tiny", dtype="float32", device="cpu")(x, x, None)


def test_model_without_vision_config_is_refused(tmp_path):
    from transformers import Qwen2Config
    with pytest.raises(ValueError, match="no vision_config"):
        check_vision_config(Qwen2Config(), "text-only")
    Qwen2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a vision-language model"):
        make_internvl_reward("single", model_id=str(tmp_path), dtype="float32", device="cpu")


def test_missing_model_names_model_and_flag():
    with pytest.raises(ModelUnavailableError, match="--internvl_model_id") as info:
        make_internvl_reward("single", model_id="no-such-org/InternVL-missing-hf",
                             dtype="float32", device="cpu")
    assert "no-such-org/InternVL-missing-hf" in str(info.value)


def test_tiny_model_is_deterministic():
    from rewards.internvl_model import build_tiny_internvl
    m1, _ = build_tiny_internvl()
    m2, _ = build_tiny_internvl()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(p1, p2), n


def test_bfloat16_scores_close_to_float32():
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(6), requires_grad=True)
    s32, _ = reward("single")(x, None, None)
    s16, _ = reward("single", dtype="bfloat16")(x, None, None)
    assert abs(s32.item() - s16.item()) < 0.02
    s16.sum().backward()
    assert x.grad.abs().sum() > 0


def test_answer_scale_parsing():
    s = parse_answer_scale("excellent=5,good=4,fair=3,poor=2,bad=1", "single")
    assert s.words[s.best] == "excellent" and s.normalised_values()[-1] == 0.0
    assert parse_answer_scale("bad,ok,great", "single").values == (0.0, 1.0, 2.0)
    assert parse_answer_scale({"A": 1, "B": 0}, "pair").words == ("A", "B")


def test_default_tiling_is_the_processors_on_non_square_photos(bundle):
    """Without max_tiles the reward tiles as InternVLProcessor does at its defaults (its call
    default crop_to_patches=True beats the image processor's own False; max_patches from the
    checkpoint): same tile count and pixels as processor(images=...) on non-square photos."""
    from PIL import Image

    r = reward("single")
    assert r.max_tiles == bundle.processor.image_processor.max_patches == 12
    for h, w in ((90, 160), (160, 90), (96, 64)):
        arr = photo(h, w)
        ref = bundle.processor(text=["<IMG_CONTEXT>"], images=[[Image.fromarray(arr)]],
                               return_tensors="pt")["pixel_values"]
        ours = r._prepare(as_tensor(arr)).pixels[0]
        assert ours.shape == ref.shape and ref.shape[0] > 1, (h, w, ref.shape)
        assert (ours - ref).abs().max() < 0.035 and (ours - ref).abs().mean() < 0.01
    assert reward("single", max_tiles=1)._prepare(as_tensor(photo(90, 160))).pixels.shape[1] == 1
