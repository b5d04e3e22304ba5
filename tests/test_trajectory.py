"""SDE trajectories: safetensors round trip, and replay of their log-probs under the model."""
import pytest
import torch

from alignprop.lora import add_lora
from alignprop.methods import base_model
from alignprop.sampler import KontextSampler, encode_prompts, stack_prompt_embeds
from alignprop.tiny_kontext import build_tiny_pipeline
from alignprop.trajectory import Trajectory, TrajectoryError, replay, replay_log_probs

H = W = 32
STEPS = 4
PROMPTS = ["make it brighter", "add snow; rm -rf $HOME"]


@pytest.fixture(scope="module")
def tiny():
    pipe = build_tiny_pipeline()
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    torch.manual_seed(0)
    params = add_lora(pipe.transformer, 4, 4, ["attn.to_q", "attn.to_v", "proj_out"], 0.0)
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             H, W, STEPS)
    inputs = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(5))
    _, traj = sampler.sample_sde(inputs, text, 0.7, seeds=[11, 12], prompts=PROMPTS)
    return sampler, text, params, traj


def test_save_load_round_trip(tiny, tmp_path):
    _, _, _, traj = tiny
    path = traj.save(tmp_path / "batch.safetensors")
    back = Trajectory.load(path)
    for name in ("latents", "log_probs", "timesteps", "sigmas", "seeds", "image_tokens"):
        assert torch.equal(getattr(back, name), getattr(traj, name)), name
        assert getattr(back, name).dtype == getattr(traj, name).dtype
    assert back.prompts == PROMPTS and back.noise_level == 0.7 and back.reduction == "mean"
    assert [p.name for p in tmp_path.iterdir()] == ["batch.safetensors"]   # no temporary left


def test_bf16_trajectories_keep_their_dtype(tmp_path):
    pipe = build_tiny_pipeline(dtype=torch.bfloat16)
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             H, W, STEPS, dtype=torch.bfloat16)
    _, traj = sampler.sample_sde(torch.rand(2, 3, H, W), text, 0.7, seeds=[1, 2])
    back = Trajectory.load(traj.save(tmp_path / "t.safetensors"))
    assert back.latents.dtype == torch.bfloat16 and torch.equal(back.latents, traj.latents)
    # the stored log-probs are those of the rounded bf16 latents: replay gives them back
    with torch.no_grad():
        assert torch.equal(replay_log_probs(sampler, back, text), traj.log_probs)


def test_replay_recomputes_the_log_probs_and_follows_the_model(tiny, tmp_path):
    sampler, text, params, traj = tiny
    back = Trajectory.load(traj.save(tmp_path / "t.safetensors"))
    with torch.no_grad():
        same = replay_log_probs(sampler, back, text)
    assert torch.equal(same, traj.log_probs)     # same model: the ratio is exactly 1
    # a LoRA update changes the policy: the replayed log-probs move, the base's do not
    with torch.no_grad():
        for name, p in sampler.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    try:
        lp = replay_log_probs(sampler, back, text, steps=[1, 3])
        assert lp.shape == (2, 2) and lp.requires_grad
        assert (lp.detach() - traj.log_probs[:, [1, 3]]).abs().max() > 1e-4
        lp.sum().backward()
        assert all(p.grad is not None for p in params) and any(p.grad.abs().sum() > 0
                                                               for p in params)
        with torch.no_grad(), base_model(sampler.transformer):
            ref = replay_log_probs(sampler, back, text)
        assert torch.equal(ref, traj.log_probs)   # LoRA off = the sampling model (B was 0)
        steps = replay(sampler, back, text, steps=[0])
        assert steps[0].mean.shape == back.latents[:, 0].shape and steps[0].std > 0
    finally:
        with torch.no_grad():
            for name, p in sampler.transformer.named_parameters():
                if "lora_B" in name:
                    p.zero_()
                p.grad = None


def test_rows_select_a_minibatch(tiny):
    _, _, _, traj = tiny
    one = traj.rows([1])
    assert torch.equal(one.latents[0], traj.latents[1]) and one.prompts == PROMPTS[1:]
    assert one.seeds.tolist() == [12]


def test_replay_refuses_another_schedule(tiny):
    sampler, text, _, traj = tiny
    other = KontextSampler(sampler.transformer, sampler.vae, sampler.scheduler,
                           sampler.transformer.config, H, W, STEPS + 1)
    with pytest.raises(TrajectoryError, match="another schedule"):
        replay_log_probs(other, traj, text)


def test_bad_files_are_one_line_errors(tiny, tmp_path):
    from safetensors.torch import save_file

    _, _, _, traj = tiny
    cases = {}
    cases["missing"] = (tmp_path / "nope.safetensors", "not found")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    cases["junk"] = (junk, "not a readable safetensors file")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other), metadata={"format": "something else"})
    cases["other"] = (other, "not a trajectory file")
    partial = tmp_path / "partial.safetensors"
    save_file({"latents": traj.latents.contiguous()}, str(partial),
              metadata={"format": "kontext-alignprop trajectory", "version": "1"})
    cases["partial"] = (partial, "lacks log_probs")
    for name, (path, match) in cases.items():
        with pytest.raises(TrajectoryError, match=match) as exc:
            Trajectory.load(path)
        assert "\n" not in str(exc.value), name
    with pytest.raises(TrajectoryError, match="log_probs has shape"):
        Trajectory(traj.latents, traj.log_probs[:, :2], traj.timesteps, traj.sigmas,
                   traj.seeds, traj.image_tokens)
