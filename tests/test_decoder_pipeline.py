"""LLaDA2UniDecoderPipeline beyond the fixtures: batching, grids with padded sequences, defaults, callbacks,
save / reload, and bad input (a clear ValueError before any model runs)."""

import pytest
import torch

from diffusers_llada_uni import LLaDA2UniDecoderPipeline, LLaDA2UniFlowMatchEulerScheduler
from diffusers_llada_uni.hub_layout import DECODERS, SUBFOLDERS


@pytest.fixture(scope="module", params=["normal", "turbo"])
def pipe(request, converted):
    pipe = LLaDA2UniDecoderPipeline.from_pretrained(converted, decoder=request.param)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _codes(batch, h, w, seed=0):
    return torch.randint(0, 64, (batch, h * w), generator=torch.Generator().manual_seed(seed))


def _noise(pipe, batch, grid, rm=1, seed=1):
    shape = pipe.latent_shape(batch, grid, rm)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_defaults_follow_the_original(pipe):
    steps = []
    pipe(_codes(1, 1, 1), (1, 1), resolution_multiplier=1, output_type="latent",
         callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    assert len(steps) == (49 if pipe.decoder == "normal" else 8)


def test_batch_equals_single_runs_on_a_padded_grid(pipe):
    """A 3 x 5 grid: 60 caption tokens and 15 image tokens (rm 1) are padded to multiples of 32 inside the
    transformer; each row of a batch must decode exactly as it does alone (normal: per-sample CFG clamp)."""
    grid, codes = (3, 5), _codes(2, 3, 5)
    noise = _noise(pipe, 2, grid)
    kwargs = {"num_inference_steps": 3, "resolution_multiplier": 1, "output_type": "latent"}
    if pipe.decoder == "turbo":
        # Per-sample generators make the per-step noise of each row independent of the batch.
        batch = pipe(codes, grid, latents=noise, generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                     **kwargs).images
        singles = [pipe(codes[i : i + 1], grid, latents=noise[i : i + 1], generator=torch.Generator().manual_seed(s),
                        **kwargs).images for i, s in enumerate((5, 6))]
    else:
        batch = pipe(codes, grid, latents=noise, **kwargs).images
        singles = [pipe(codes[i : i + 1], grid, latents=noise[i : i + 1], **kwargs).images for i in range(2)]
    assert batch.shape == (2, 16, 6, 10)
    torch.testing.assert_close(batch, torch.cat(singles), atol=1e-5, rtol=0)


def test_accepts_generate_image_dicts_and_lists(pipe):
    result = {"token_ids": _codes(1, 2, 3)[0].tolist(), "h": 2, "w": 3}
    kwargs = {"num_inference_steps": 2, "resolution_multiplier": 1, "output_type": "pt"}
    a = pipe(result, generator=torch.Generator().manual_seed(0), **kwargs).images
    b = pipe(torch.tensor(result["token_ids"]), (2, 3), generator=torch.Generator().manual_seed(0), **kwargs).images
    assert a.shape == (1, 3, 32, 48)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_callback_can_replace_latents(pipe):
    def zero(pipe, step, t, tensors):
        assert set(tensors) == {"latents", "cap_feats"}
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = pipe(_codes(1, 1, 1), (1, 1), num_inference_steps=2, resolution_multiplier=1, output_type="latent",
               callback_on_step_end=zero, callback_on_step_end_tensor_inputs=["latents", "cap_feats"]).images
    assert torch.count_nonzero(out) == 0


def test_save_and_reload(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    folder = SUBFOLDERS[DECODERS[pipe.decoder][0]]
    assert (tmp_path / folder / "config.json").is_file() and (tmp_path / "model_index.json").is_file()
    again = LLaDA2UniDecoderPipeline.from_pretrained(tmp_path, decoder=pipe.decoder)
    again.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 2, "resolution_multiplier": 1, "output_type": "pt"}
    torch.testing.assert_close(again(_codes(1, 2, 2), (2, 2), generator=torch.Generator().manual_seed(3), **kwargs)
                               .images,
                               pipe(_codes(1, 2, 2), (2, 2), generator=torch.Generator().manual_seed(3), **kwargs)
                               .images, atol=0, rtol=0)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((_codes(1, 2, 2), (2, 3)), {}, "holds 4 tokens.*2x3"),
        ((_codes(1, 2, 2) + 100, (2, 2)), {}, r"offset-free codes in \[0, 64\)"),
        ((-_codes(1, 2, 2) - 1, (2, 2)), {}, "offset-free"),
        ((_codes(1, 2, 2).float(), (2, 2)), {}, "integer tensor"),
        ((_codes(1, 2, 2), (2, 0)), {}, "grid_size"),
        ((_codes(1, 2, 2), None), {}, "grid_size"),
        ((None, (2, 2)), {}, "image_tokens"),
        ((_codes(1, 2, 2), (2, 2)), {"num_inference_steps": 0}, "num_inference_steps"),
        ((_codes(1, 2, 2), (2, 2)), {"guidance_scale": 0.5}, "guidance_scale.*>= 1"),
        ((_codes(1, 2, 2), (2, 2)), {"cfg_normalization": -1}, "cfg_normalization"),
        ((_codes(1, 2, 2), (2, 2)), {"resolution_multiplier": 0}, "resolution_multiplier"),
        ((_codes(1, 2, 2), (2, 2)), {"output_type": "jpg"}, "output_type"),
        ((_codes(1, 2, 2), (2, 2)), {"latents": torch.zeros(1, 16, 3, 3)}, "latents"),
        ((_codes(1, 2, 2), (2, 2)), {"callback_on_step_end_tensor_inputs": ["x"]}, "tensor_inputs"),
    ],
)
def test_bad_input_fails_before_any_model_runs(pipe, monkeypatch, args, kwargs, match):
    def forbidden(*a, **k):
        raise AssertionError("a model ran before the inputs were checked")

    for module in (pipe.semantic_embedder, pipe.transformer, pipe.vae):
        monkeypatch.setattr(module, "forward", forbidden)
    with pytest.raises(ValueError, match=match):
        pipe(*args, **kwargs)


def test_scheduler_rejects_bad_settings():
    with pytest.raises(ValueError, match="stochastic_ratio"):
        LLaDA2UniFlowMatchEulerScheduler(stochastic_ratio=2.0)
    with pytest.raises(ValueError, match="shift_factor"):
        LLaDA2UniFlowMatchEulerScheduler(shift_factor=0)
    scheduler = LLaDA2UniFlowMatchEulerScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(1), 0.0, torch.zeros(1))
