"""The original task methods (generate_image, understand_image, edit_image) end to end on a tiny composite, also
loaded plugin-free from a saved folder with AutoModel + AutoProcessor."""

import json

import numpy as np
import pytest
import torch

from conftest import run_without_plugin, tiny_config_kwargs
from test_processor import BOI, CODEBOOK, EOI, OFFSET, PAD, SOI, UNC, VOCAB, make_processor
from transformers_llada_uni import LLaDA2UniConfig, LLaDA2UniForConditionalGeneration, LLaDA2UniImageProcessor


@pytest.fixture(scope="module")
def processor():
    # A small edit budget (8 cells of 32 px instead of 256) keeps the tiny model's sequences short.
    return make_processor(image_processor=LLaDA2UniImageProcessor(edit_max_cells=8))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(11)
    text = tiny_config_kwargs(vocab_size=OFFSET + CODEBOOK, mask_token_id=VOCAB["<|mask|>"], eos_token_id=PAD,
                              pad_token_id=PAD, bos_token_id=VOCAB["<|startoftext|>"], initializer_range=0.1)
    config = LLaDA2UniConfig(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_heads=2, depth=1, patch_size=16, image_size=64),
        vq_config=dict(num_embeddings=CODEBOOK, embed_dim=16, latent_channels=32),
        image_start_token_id=SOI, image_end_token_id=EOI, boi_token_id=BOI, uncondition_token_id=UNC,
        reserved_token_start_id=VOCAB["<|reserved_token_0|>"],
    )
    model = LLaDA2UniForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    return model


def picture(seed=0, height=64, width=96):
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def test_generate_image_grid_bookkeeping(model, processor):
    out = model.generate_image("A red cat", image_h=128, image_w=192, processor=processor, steps=4)
    assert (out["h"], out["w"]) == (4, 6)
    assert len(out["token_ids"]) == 24 and all(0 <= t < CODEBOOK for t in out["token_ids"])
    again = model.generate_image("A red cat", image_h=128, image_w=192, processor=processor, steps=4)
    assert again == out


def test_generate_image_equals_token_level_call(model, processor):
    batch = processor(text="A red cat", mode="t2i", height=96, width=96)
    direct = model.generate_image_tokens(batch["input_ids"], uncond_input_ids=batch["uncond_input_ids"],
                                         height=3, width=3, cfg_scale=2.0, steps=4)
    assert model.generate_image("A red cat", 96, 96, processor=processor, steps=4)["token_ids"] == \
        direct["token_ids"][0].tolist()


def test_generate_image_thinking_returns_reasoning(model, processor):
    out = model.generate_image("A red cat", 64, 64, processor=processor, mode="thinking", steps=4,
                               thinking_steps=4, thinking_gen_length=16)
    assert isinstance(out["thinking"], str)
    assert (out["h"], out["w"]) == (2, 2) and len(out["token_ids"]) == 4


def test_understand_image_pixels_and_tokens_agree(model, processor):
    image = picture()
    answer = model.understand_image(image=image, question="What is shown ?", processor=processor,
                                    gen_length=12, steps=4)
    assert isinstance(answer, str)
    pixels = processor.image_processor(image)
    codes = model.get_image_tokens(pixels["pixel_values"], pixels["image_grid_thw"])
    _, h, w = pixels["image_grid_thw"][0].tolist()
    with_offset = (codes + OFFSET).tolist()  # the original API takes ids with the image offset
    assert model.understand_image(with_offset, h, w, "What is shown ?", processor=processor, gen_length=12,
                                  steps=4) == answer


def test_edit_image_keeps_the_source_grid(model, processor):
    out = model.edit_image(image=picture(1, 64, 128), instruction="Make it blue", processor=processor, steps=4,
                           cfg_text_scale=4.0, cfg_image_scale=1.5)
    grid = processor(text="Make it blue", mode="edit", images=picture(1, 64, 128))["image_grid_thw"][0].tolist()
    assert (out["h"], out["w"]) == (grid[1], grid[2])
    assert len(out["token_ids"]) == out["h"] * out["w"]


def test_task_methods_need_a_processor(model):
    with pytest.raises(ValueError, match="processor"):
        model.generate_image("A red cat")
    with pytest.raises(ValueError, match="mode"):
        model.generate_image("A red cat", processor=make_processor(), mode="sketch")
    with pytest.raises(ValueError, match="image_tokens"):
        model.understand_image([OFFSET] * 5, 2, 3, "What is shown ?", processor=make_processor())


def test_saved_composite_runs_the_tasks_without_plugin(tmp_path, model, processor):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    np.save(tmp_path / "image.npy", picture(2))
    expected = {
        "t2i": model.generate_image("A red cat", 96, 64, processor=processor, steps=4),
        "answer": model.understand_image(image=picture(2), question="What is shown ?", processor=processor,
                                         gen_length=8, steps=4),
        "edit": model.edit_image(image=picture(2), instruction="Make it blue", processor=processor, steps=4),
    }
    result = run_without_plugin(
        f"""
        import json, numpy as np, torch
        from transformers import AutoModel, AutoProcessor
        folder = {str(tmp_path)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        image = np.load(folder + "/image.npy")
        print(json.dumps({{
            "class": type(model).__name__,
            "t2i": model.generate_image("A red cat", 96, 64, processor=processor, steps=4),
            "answer": model.understand_image(image=image, question="What is shown ?", processor=processor,
                                             gen_length=8, steps=4),
            "edit": model.edit_image(image=image, instruction="Make it blue", processor=processor, steps=4),
        }}))
        """
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop("class") == "LLaDA2UniForConditionalGeneration"
    assert report == json.loads(json.dumps(expected))


def test_multi_reference_edit_uses_the_first_grid(model, processor):
    sources = [picture(3, 64, 128), picture(4, 128, 64)]
    out = model.edit_image(image=sources, instruction="Make it blue", processor=processor, steps=4)
    grid = processor(text="Make it blue", mode="edit", images=sources)["image_grid_thw"][0].tolist()
    assert (out["h"], out["w"]) == (grid[1], grid[2])
    assert len(out["token_ids"]) == out["h"] * out["w"] and all(0 <= t < CODEBOOK for t in out["token_ids"])


def test_edit_image_from_original_token_ids(model, processor):
    h, w = 2, 3
    codes = torch.arange(h * w) % CODEBOOK
    by_offset = model.edit_image((codes + OFFSET).tolist(), h, w, "Make it blue", processor=processor, steps=4)
    by_codes = model.edit_image(codes.tolist(), h, w, "Make it blue", processor=processor, steps=4)
    assert by_offset == by_codes and (by_offset["h"], by_offset["w"]) == (h, w)
