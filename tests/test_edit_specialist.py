"""--preset edit_specialist: the Image-Editing Specialists objective (score_alpha, rec_lambda)
and its preset, runnable with GRPO, D3PO and AlignProp."""
import json

import pytest
import torch

from alignprop.config import parse_config
from alignprop.trainer import train
from common.photos import write_photos
from rewards.edit_specialist import EditSpecialistReward, standardize


def _z(x):
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean()) / (x.std(unbiased=False) + 1e-8)


def _judges(struct, sem_by_instruction, asked):
    def structural(images, inputs, prompts):
        return torch.tensor(struct, dtype=torch.float32), {}

    def semantic_for(question):
        asked.append(question)
        instruction = question.split('"')[1]

        def judge(images, inputs, prompts):
            assert set(prompts) == {instruction}
            return torch.tensor([sem_by_instruction[instruction]] * len(images)), {}
        return judge
    return structural, semantic_for


def test_rank_score_is_the_papers_arithmetic_with_score_alpha_and_rec_lambda():
    inputs = torch.full((4, 3, 8, 8), 0.5)
    images = inputs.clone()
    images[1] += 0.2          # MSE 0.04
    images[3] -= 0.4          # MSE 0.16
    prompts = ["snow", "snow", "night", "night"]
    struct = [0.9, 0.6, 0.7, 0.8]
    sem = {"snow": 0.3, "night": 0.8}
    asked = []
    reward = EditSpecialistReward(*_judges(struct, sem, asked), score_alpha=2.0, rec_lambda=0.5,
                                  semantic_prompt='Edit for "{instruction}"? 0-9, one digit.')
    total, metrics = reward(images, inputs, prompts)
    rec = torch.tensor([0.0, 0.04, 0.0, 0.16])
    semantic = torch.tensor([0.3, 0.3, 0.8, 0.8]) - 0.5 * rec
    torch.testing.assert_close(total, _z(struct) + 2.0 * _z(semantic.tolist()))
    assert asked == ['Edit for "snow"? 0-9, one digit.', 'Edit for "night"? 0-9, one digit.']
    assert metrics["reconstruction_mse"] == pytest.approx(0.05)
    # score_alpha is the weight of the semantic score: large, it decides the ranking alone
    heavy = EditSpecialistReward(*_judges(struct, sem, []), score_alpha=100.0, rec_lambda=0.5)
    order = torch.argsort(heavy(images, inputs, prompts)[0], descending=True).tolist()
    assert order == torch.argsort(semantic, descending=True).tolist()
    # gradient methods: the plain sum (a batch's z-scores average to 0, no gradient)
    plain = EditSpecialistReward(*_judges(struct, sem, []), score_alpha=2.0, rec_lambda=0.5,
                                 standardize=False)
    torch.testing.assert_close(plain(images, inputs, prompts)[0],
                               torch.tensor(struct) + 2.0 * semantic)
    assert float(standardize(torch.tensor([3.0]))) == 0.0


def test_reconstruction_term_gives_pixels_a_gradient_toward_the_input():
    inputs = torch.full((2, 3, 8, 8), 0.5)
    images = (inputs + 0.1).requires_grad_(True)
    reward = EditSpecialistReward(*_judges([0.5, 0.5], {"a": 0.5}, []), rec_lambda=1.0,
                                  standardize=False)
    reward(images, inputs, ["a", "a"])[0].sum().backward()
    assert (images.grad < 0).all()     # more reward = less MSE = back toward the input


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    write_photos(d, ["camera", "coins"])
    return d


TINY = ["--pretrained_model", "tiny", "--image_height", "32", "--image_width", "32",
        "--sample_num_steps", "2", "--max_sequence_length", "16", "--internvl_model_id", "tiny",
        "--edit_structural", "internvl-content", "--max_train_steps", "1", "--log_with", "none",
        "--train_batch_size", "2", "--rl_inputs_per_round", "2", "--log_image_freq", "0"]


def test_preset_holds_the_papers_settings_and_flags_override_it(photos, tmp_path):
    cfg, rf = parse_config(["--preset", "edit_specialist", "--data_dir", str(photos)])
    assert (cfg.method, cfg.dpo_beta, cfg.d3po_eps, cfg.train_learning_rate) == ("d3po", 0.1, 0.1,
                                                                                  3e-5)
    assert (rf.edit_specialist_weight, rf.score_alpha, rf.rec_lambda, rf.crispness_weight) == \
        (1.0, 1.0, 0.5, 0.0)
    over = tmp_path / "over.yaml"
    over.write_text("score_alpha: 3\n")
    cfg, rf = parse_config(["--preset", "edit_specialist", "--config", str(over), "--data_dir",
                            str(photos), "--rec_lambda", "0.1", "--method", "grpo"])
    assert (cfg.method, rf.score_alpha, rf.rec_lambda) == ("grpo", 3.0, 0.1)


@pytest.mark.parametrize("method", ["d3po", "grpo", "alignprop"])
def test_preset_trains_with_each_method(method, photos, tmp_path):
    out = tmp_path / method
    extra = ["--grpo_group_size", "2"] if method == "grpo" else []
    cfg, rf = parse_config(["--preset", "edit_specialist", "--method", method, "--data_dir",
                            str(photos), "--output_dir", str(out)] + TINY + extra)
    result = train(cfg, rf)
    row = result.history[-1]
    for part in ("structural", "semantic", "reconstruction_mse"):
        assert f"train/edit_specialist/{part}" in row
    (term,) = json.loads((out / "run_config.json").read_text())["rewards"]
    assert term["term"] == "edit_specialist"
    # the paper's ranking (z-scores over the round) for the score methods, the plain
    # objective for the gradient one
    assert term["standardize"] is (method != "alignprop")
    assert row["train/grad_norm"] > 0
