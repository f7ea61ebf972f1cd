"""LLaDA2UniPipeline end to end on the converted public checkpoint (random tiny weights): the three tasks, batching,
determinism, output types, save / reload, stage loading, CPU offload hooks and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_llada_uni import LLaDA2UniDecoderPipeline, LLaDA2UniPipeline
from diffusers_llada_uni.hub_layout import SUBFOLDERS
from diffusers_llada_uni.loading import ComponentSource
from transformers_llada_uni import LLaDA2UniProcessor

LLM = {"block_length": 4, "threshold": 0.95}


@pytest.fixture(scope="module")
def pipe(converted):
    pipe = LLaDA2UniPipeline.from_pretrained(converted)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def _t2i(pipe, prompt="a red circle", **kwargs):
    kwargs = {"height": 64, "width": 64, "generator": _seeded(), **LLM, **kwargs}
    return pipe(prompt, **kwargs)


def test_components_and_decoders(pipe):
    assert pipe.decoders == ["normal", "turbo"]
    assert isinstance(pipe.processor, LLaDA2UniProcessor)
    assert pipe.transformer is not pipe.transformer_turbo


def test_text_to_image_is_the_model_then_the_decoder(pipe):
    out = _t2i(pipe, decoder="turbo", output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and out.text is None
    tokens = out.image_tokens[0]
    assert (tokens["h"], tokens["w"]) == (2, 2)
    expected = pipe.mllm.generate_image("a red circle", 64, 64, processor=pipe.processor, **LLM)
    assert tokens["token_ids"].tolist() == expected["token_ids"]
    decoder = LLaDA2UniDecoderPipeline(pipe.semantic_embedder, pipe.transformer_turbo, pipe.vae, pipe.scheduler_turbo)
    decoder.set_progress_bar_config(disable=True)
    direct = decoder(tokens["token_ids"], (2, 2), generator=_seeded(), output_type="pt").images
    # The pipeline's generator first served the (greedy, draw-free) LLM, so the decoder sees the same stream.
    torch.testing.assert_close(out.images, direct, atol=0, rtol=0)


def test_same_generator_same_images_and_output_types_agree(pipe):
    runs = {kind: _t2i(pipe, decoder="normal", num_inference_steps=3, output_type=kind).images
            for kind in ("pt", "np", "pil", "latent")}
    again = _t2i(pipe, decoder="normal", num_inference_steps=3, output_type="pt").images
    torch.testing.assert_close(runs["pt"], again, atol=0, rtol=0)
    np.testing.assert_array_equal(runs["np"], runs["pt"].permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(np.asarray(runs["pil"][0]), (runs["pt"][0] * 255).byte().permute(1, 2, 0).numpy())
    assert runs["latent"].shape == (1, 16, 8, 8)
    from diffusers_llada_uni.pipeline_llada2_uni_decoder import decode_latents

    with torch.no_grad():
        torch.testing.assert_close(decode_latents(pipe.vae, runs["latent"], "pt"), runs["pt"], atol=0, rtol=0)


def test_batched_prompts_and_images_per_prompt(pipe):
    prompts = ["a red circle", "two blue squares"]
    out = _t2i(pipe, prompts, width=96, num_images_per_prompt=2, output_type="np")
    assert out.images.shape == (4, 64, 96, 3)
    tokens = [item["token_ids"].tolist() for item in out.image_tokens]
    for i, prompt in enumerate(prompts):
        alone = _t2i(pipe, prompt, width=96, output_type="tokens").image_tokens[0]["token_ids"].tolist()
        assert tokens[2 * i] == tokens[2 * i + 1] == alone
    # Each image gets its own noise.
    assert not np.array_equal(out.images[0], out.images[1])


def test_thinking_returns_the_reasoning(pipe):
    out = _t2i(pipe, thinking=True, thinking_max_new_tokens=8, output_type="tokens")
    assert out.images is None and isinstance(out.text, list) and isinstance(out.text[0], str)
    expected = pipe.mllm.generate_image("a red circle", 64, 64, processor=pipe.processor, mode="thinking",
                                        thinking_gen_length=8, **LLM)
    assert out.image_tokens[0]["token_ids"].tolist() == expected["token_ids"] and out.text[0] == expected["thinking"]


def test_understanding_answers_like_the_model(pipe, picture):
    out = pipe(image=picture, question="What is shown?", max_new_tokens=8, **LLM)
    assert out.images is None and out.image_tokens is None
    expected = pipe.mllm.understand_image(image=picture, question="What is shown?", processor=pipe.processor,
                                          gen_length=8, **LLM)
    assert out.text == [expected]
    batch = pipe(image=picture, question=["What is shown?", "Colour?"], max_new_tokens=8, **LLM)
    assert batch.text[0] == expected and len(batch.text) == 2


def test_edit_follows_the_model_and_decodes_at_the_source_grid(pipe, picture):
    out = pipe(image=picture, instruction="make it blue", resolution_multiplier=1, decoder="turbo",
               num_inference_steps=1, generator=_seeded(), **LLM)
    tokens = out.image_tokens[0]
    expected = pipe.mllm.edit_image(image=picture, instruction="make it blue", processor=pipe.processor, **LLM)
    assert tokens["token_ids"].tolist() == expected["token_ids"]
    assert out.images[0].size == (16 * expected["w"], 16 * expected["h"])


def test_guidance_left_out_comes_from_the_generation_config(pipe, picture, monkeypatch):
    settings = pipe.mllm.generation_config
    assert (settings.guidance_scale, settings.edit_guidance_scale) == (2.0, 4.0)
    monkeypatch.setattr(settings, "guidance_scale", 1.0)
    monkeypatch.setattr(settings, "edit_guidance_scale", 1.5)
    drawn = _t2i(pipe, output_type="tokens").image_tokens[0]["token_ids"].tolist()
    assert drawn == pipe.mllm.generate_image("a red circle", 64, 64, processor=pipe.processor, cfg_scale=1.0,
                                             **LLM)["token_ids"]
    # The model's convenience methods read the same config: no scale given, the same tokens.
    assert drawn == pipe.mllm.generate_image("a red circle", 64, 64, processor=pipe.processor, **LLM)["token_ids"]
    edited = pipe(image=picture, instruction="make it blue", output_type="tokens", **LLM).image_tokens[0]
    expected = pipe.mllm.edit_image(image=picture, instruction="make it blue", processor=pipe.processor,
                                    cfg_text_scale=1.5, **LLM)
    assert edited["token_ids"].tolist() == expected["token_ids"]
    assert expected == pipe.mllm.edit_image(image=picture, instruction="make it blue", processor=pipe.processor, **LLM)
    # The recorded scales matter: the release's 2.0 / 4.0 give other tokens on these weights.
    assert drawn != pipe.mllm.generate_image("a red circle", 64, 64, processor=pipe.processor, cfg_scale=2.0,
                                             **LLM)["token_ids"]
    assert expected["token_ids"] != pipe.mllm.edit_image(image=picture, instruction="make it blue",
                                                         processor=pipe.processor, cfg_text_scale=4.0,
                                                         **LLM)["token_ids"]


def _three_tasks(pipe, picture):
    """Text-to-image, understanding and editing with fixed generators (the edit decoded small: rm 1, 1 step)."""
    image = _t2i(pipe, output_type="pt").images
    answer = pipe(image=picture, question="What is shown?", max_new_tokens=8, generator=_seeded(1), **LLM).text
    edited = pipe(image=picture, instruction="make it blue", resolution_multiplier=1, num_inference_steps=1,
                  output_type="pt", generator=_seeded(2), **LLM).images
    return image, answer, edited


def test_save_and_reload_round_trip(pipe, picture, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_llada2_uni", "LLaDA2UniPipeline"]  # diffusers imports the root file
    assert index["transformer_turbo"] == ["diffusers", "ZImageTransformer2DModel"]
    assert "_subfolders" not in index and (tmp_path / "pipeline_llada2_uni.py").is_file()
    assert (tmp_path / "README.md").read_text().startswith("---\nlibrary_name: transformers")
    # Every weight lives in exactly one file.
    weight_files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.safetensors"))
    models = ("semantic_embedder", "transformer", "transformer_turbo", "vae")
    assert [f.split("/")[0] for f in weight_files] == sorted(["model.safetensors", *(SUBFOLDERS[n] for n in models)])
    reloaded = LLaDA2UniPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    first, again, other = _three_tasks(pipe, picture), _three_tasks(pipe, picture), _three_tasks(reloaded, picture)
    for run in (again, other):
        torch.testing.assert_close(run[0], first[0], atol=0, rtol=0)
        assert run[1] == first[1]
        torch.testing.assert_close(run[2], first[2], atol=0, rtol=0)


def test_stage_loading_holds_one_model_at_a_time(converted, pipe, monkeypatch):
    loaded = []
    original = ComponentSource.load

    def load(self, name):
        for previous in loaded:
            assert all(p.device.type == "meta" for p in previous.parameters()), "a stage was not released"
        component = original(self, name)
        if isinstance(component, torch.nn.Module):
            loaded.append(component)
        return component

    staged = LLaDA2UniPipeline.from_pretrained(converted, stage_loading=True)
    staged.set_progress_bar_config(disable=True)
    assert staged.mllm is None and staged.transformer is None and staged.decoders == ["normal", "turbo"]
    monkeypatch.setattr(ComponentSource, "load", load)
    out = _t2i(staged, output_type="pt").images
    assert len(loaded) == 4  # mllm, semantic embedder, turbo decoder, VAE
    torch.testing.assert_close(out, _t2i(pipe, output_type="pt").images, atol=0, rtol=0)


def test_model_cpu_offload_gives_the_same_images(converted, pipe):
    offloaded = LLaDA2UniPipeline.from_pretrained(converted, decoder="turbo")
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_model_cpu_offload(device="cpu")
    assert all(hasattr(getattr(offloaded, name), "_hf_hook") for name in ("mllm", "transformer_turbo", "vae"))
    out = _t2i(offloaded, output_type="pt")
    assert out.image_tokens[0]["token_ids"].tolist() == _t2i(pipe, output_type="tokens").image_tokens[0][
        "token_ids"].tolist()
    # The hooks hand the decoder copies of its inputs at other addresses, which changes vectorised float sums in
    # the last bits (about 1e-7 per step); nothing else differs.
    torch.testing.assert_close(out.images, _t2i(pipe, output_type="pt").images, atol=1e-5, rtol=0)


def test_understanding_only_pipeline(converted, picture):
    reader = LLaDA2UniPipeline.from_pretrained(converted, decoder=None)
    assert reader.decoders == [] and reader.transformer is None
    assert reader(image=picture, question="What?", max_new_tokens=4, **LLM).text
    assert _t2i(reader, output_type="tokens").image_tokens[0]["token_ids"].numel() == 4
    with pytest.raises(ValueError, match="no decoder"):
        _t2i(reader)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 48}, "height.*multiple of 32"),
        ({"width": 100, "resolution_multiplier": 1}, "width.*multiple of 16"),
        ({"decoder": "fast"}, "decoder"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"decoder_guidance_scale": 0.5}, "decoder_guidance_scale"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"resolution_multiplier": 0}, "resolution_multiplier"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_arguments_fail_before_any_model_runs(pipe, monkeypatch, kwargs, match):
    def forbidden(*args, **kw):
        raise AssertionError("a model ran before the arguments were checked")

    monkeypatch.setattr(pipe.mllm, "generate_image_tokens", forbidden)
    with pytest.raises(ValueError, match=match):
        _t2i(pipe, **kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, img: p(), "prompt"),
        (lambda p, img: p("x", image=img), "question=.*instruction="),
        (lambda p, img: p(image=img), "exactly one of `question`"),
        (lambda p, img: p(question="why?"), "need an `image`"),
        (lambda p, img: p(""), "prompt"),
        (lambda p, img: p(image=[img, img], question=["a", "b", "c"]), "one image per text"),
    ],
)
def test_bad_task_inputs(pipe, picture, call, match):
    with pytest.raises(ValueError, match=match):
        call(pipe, picture)


def test_missing_parts_are_named(tmp_path, converted):
    with pytest.raises(ValueError, match="neither a folder nor a Hub repo id"):
        LLaDA2UniPipeline.from_pretrained(tmp_path / "absent")
    with pytest.raises(ValueError, match="transformers model"):
        LLaDA2UniPipeline.from_pretrained(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("transformer", "semantic_embedder", "vae"):
        (partial / SUBFOLDERS[name]).symlink_to(converted / SUBFOLDERS[name])
    with pytest.raises(ValueError, match="turbo decoder"):
        LLaDA2UniDecoderPipeline.from_pretrained(partial, decoder="turbo")
    with pytest.raises(ValueError, match="decoder"):
        LLaDA2UniDecoderPipeline.from_pretrained(partial, decoder="medium")
