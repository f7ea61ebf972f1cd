"""Decoder parity with the original `decode_vq_tokens` (recorded in tests/data/parity/expected), through the user
path: the public checkpoint converted with the command-line script, then
`LLaDA2UniDecoderPipeline.from_pretrained(out, decoder=...)`.

normal: from the recorded initial noise (`latents=`); turbo: from the recorded noise and a generator seeded with the
recorded seed, which must replay the original's per-step float64 draws.
"""

import numpy as np
import pytest
import torch

from conftest import PARITY_DIR

from diffusers_llada_uni import LLaDA2UniDecoderPipeline, LLaDA2UniFlowMatchEulerScheduler

ATOL = 1e-4
FIXTURES = {"normal": "decoder_normal.pt", "turbo": "decoder_turbo.pt"}


def _fixture(parity_dir, decoder):
    return torch.load(parity_dir / "expected" / FIXTURES[decoder], weights_only=True)


def _steps(fixture):
    # num_steps counts grid points: the normal sampler evaluates the model at all but the last one.
    return fixture["num_steps"] - 1 if fixture["decode_mode"] == "normal" else fixture["num_steps"]


@pytest.fixture(scope="module", params=["normal", "turbo"])
def case(request, converted):
    parity_dir = PARITY_DIR
    pipe = LLaDA2UniDecoderPipeline.from_pretrained(converted, decoder=request.param)
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe, _fixture(parity_dir, request.param)


def _run(pipe, fixture, recorder=None, **kwargs):
    seed = fixture["rng_seed_after_initial_noise"]

    def callback(pipe, step, t, tensors):
        recorder.append((float(t), tensors["latents"].clone()))
        return {}

    return pipe(
        fixture["token_ids"],
        (fixture["h"], fixture["w"]),
        latents=fixture["initial_noise"],
        num_inference_steps=_steps(fixture),
        resolution_multiplier=fixture["resolution_multiplier"],
        generator=torch.Generator().manual_seed(seed),
        callback_on_step_end=callback if recorder is not None else None,
        **kwargs,
    ).images


def test_selects_the_decoder_and_sampler(case):
    decoder, pipe, fixture = case
    assert pipe.decoder == decoder
    assert isinstance(pipe.scheduler, LLaDA2UniFlowMatchEulerScheduler)
    assert pipe.scheduler.is_stochastic == (decoder == "turbo")


def test_semantic_embedder_matches_cap_feats(case):
    _, pipe, fixture = case
    with torch.no_grad():
        cap = pipe.semantic_embedder(fixture["token_ids"][None], (fixture["h"], fixture["w"]))
    torch.testing.assert_close(cap, fixture["cap_feats"], atol=1e-6, rtol=0)


def test_model_times_match(case):
    _, pipe, fixture = case
    pipe.scheduler.set_timesteps(_steps(fixture))
    torch.testing.assert_close(pipe.scheduler.timesteps.double(), fixture["model_call_t"], atol=0, rtol=0)


def test_final_latents_and_steps_match(case):
    _, pipe, fixture = case
    steps = []
    latents = _run(pipe, fixture, recorder=steps, output_type="latent")
    expected = fixture["final_latent"][:, :, 0]
    assert latents.shape == expected.shape and latents.dtype == torch.float32
    assert (latents - expected).abs().max() < ATOL
    assert [t for t, _ in steps] == pytest.approx(fixture["model_call_t"].tolist(), abs=1e-7)


def test_velocities_match(case):
    """The velocity the sampler used at each step, recovered from consecutive states.

    normal (Euler): x' = x + (t' - t) v. turbo: x' = t' (x + (1 - t) v) + (1 - t') eps, with eps the recorded
    step noise (the fixture holds it, so the fresh noise can be taken out again)."""
    decoder, pipe, fixture = case
    steps = []
    _run(pipe, fixture, recorder=steps, output_type="latent")
    times = pipe.scheduler.times.double()
    states = [fixture["initial_noise"][:, :, 0].double()] + [state.double() for _, state in steps]
    for i in range(len(steps)):
        if decoder == "normal":
            velocity = (states[i + 1] - states[i]) / (times[i + 1] - times[i])
        else:
            noise = fixture["turbo_step_noise"][i][:, :, 0]
            clean = (states[i + 1] - (1 - times[i + 1]) * noise) / times[i + 1]
            velocity = (clean - states[i]) / (1 - times[i])
        assert (velocity - fixture["model_call_velocity"][i][:, :, 0]).abs().max() < 1e-3 * (1 + velocity.abs().max())


def test_image_matches(case):
    _, pipe, fixture = case
    image = _run(pipe, fixture, output_type="pt")
    assert image.shape == (1, *fixture["image"].shape)
    assert (image[0] - fixture["image"]).abs().max() < ATOL


def test_pil_is_the_truncated_float_image(case):
    _, pipe, fixture = case
    (pil,) = _run(pipe, fixture, output_type="pil")
    expected = (fixture["image"] * 255).byte().permute(1, 2, 0).numpy().astype(np.int32)
    got = np.asarray(pil).astype(np.int32)
    # Values on a truncation edge may land one step apart; everything else is exact.
    assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.99


def test_turbo_noise_is_the_seed_protocol(parity_dir):
    """`torch.manual_seed(s)` then one float64 draw per step == our scheduler's draws from a generator seeded s."""
    fixture = _fixture(parity_dir, "turbo")
    scheduler = LLaDA2UniFlowMatchEulerScheduler(shift_factor=1.0, stochastic_ratio=1.0)
    scheduler.set_timesteps(fixture["num_steps"])
    generator = torch.Generator().manual_seed(fixture["rng_seed_after_initial_noise"])
    shape = fixture["initial_noise"][:, :, 0].shape
    zero = torch.zeros(shape, dtype=torch.float64)
    for i, t in enumerate(scheduler.timesteps):
        # With zero state and velocity the step returns (1 - t_next) * noise.
        out = scheduler.step(torch.zeros(shape), t, zero, generator=generator).prev_sample
        t_next = scheduler.times[i + 1].double()
        if t_next < 1:
            torch.testing.assert_close(out / (1 - t_next), fixture["turbo_step_noise"][i][:, :, 0], atol=1e-12,
                                       rtol=1e-12)


@pytest.mark.parametrize("decoder", ["normal", "turbo"])
def test_diffusers_own_loader_gives_the_original_image(converted, decoder):
    """The same parity through `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`: diffusers itself
    reads the converted folder (root pipeline file, custom components), and its decoder parts reproduce the image."""
    from diffusers import DiffusionPipeline

    full = DiffusionPipeline.from_pretrained(converted, trust_remote_code=True)
    transformer = full.transformer if decoder == "normal" else full.transformer_turbo
    scheduler = full.scheduler if decoder == "normal" else full.scheduler_turbo
    pipe = LLaDA2UniDecoderPipeline(full.semantic_embedder, transformer, full.vae, scheduler)
    pipe.set_progress_bar_config(disable=True)
    fixture = _fixture(PARITY_DIR, decoder)
    image = _run(pipe, fixture, output_type="pt")
    assert (image[0] - fixture["image"]).abs().max() < ATOL
