"""Interleaved generation (text and images in one response): the grammar on hand-made canvases, the constraint hook,
end-to-end runs on a tiny composite whose logits are biased towards writing image headers, and bad input."""

import pytest
import torch

from conftest import run_without_plugin, tiny_config_kwargs
from test_processor import BOI, CODEBOOK, EOI, OFFSET, PAD, SOI, UNC, VOCAB, T, make_processor
from transformers_llada_uni import LLaDA2UniConfig, LLaDA2UniForConditionalGeneration
from transformers_llada_uni.generation_interleaved_llada2_uni import InterleavedGrammar, make_constraint, plan_row

M = VOCAB["<|mask|>"]
HI = VOCAB["Hi"]


def R(n):
    return VOCAB[f"<|reserved_token_{n}|>"]


def grammar(max_grid=(3, 3), invalid_size="clamp", text_order="parallel"):
    return InterleavedGrammar(vocab_size=OFFSET + CODEBOOK, mask_id=M, image_start_id=SOI, boi_id=BOI,
                              image_end_id=EOI, size_ids=[R(n) for n in range(48)], code_offset=OFFSET,
                              codebook_size=CODEBOOK, max_grid=max_grid, invalid_size=invalid_size,
                              text_order=text_order)


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(11)
    text = tiny_config_kwargs(vocab_size=OFFSET + CODEBOOK, mask_token_id=M, eos_token_id=PAD, pad_token_id=PAD,
                              bos_token_id=VOCAB["<|startoftext|>"], initializer_range=0.1)
    config = LLaDA2UniConfig(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_heads=2, depth=1, patch_size=16, image_size=64),
        vq_config=dict(num_embeddings=CODEBOOK, embed_dim=16, latent_channels=32),
        image_start_token_id=SOI, image_end_token_id=EOI, boi_token_id=BOI, uncondition_token_id=UNC,
        reserved_token_start_id=R(0),
    )
    model = LLaDA2UniForConditionalGeneration(config).eval()
    # Bias the logits so that the model opens images (<|image|>, a size of 2) and writes "Hi" as text, never EOS.
    bias = torch.zeros(OFFSET + CODEBOOK)
    bias[SOI], bias[R(2)], bias[HI], bias[PAD] = 6.0, 6.0, 4.0, -20.0
    model.lm_head.register_forward_hook(lambda module, args, output: output + bias)
    return model


def check_grammar(ids, max_grid=(47, 47)):
    """Every image is <|image|> h w <boi> + h*w codes + <|/image|>; no code, mask or stray header token elsewhere."""
    i, images = 0, []
    while i < len(ids):
        token = ids[i]
        if token == SOI:
            h, w = ids[i + 1] - R(0), ids[i + 2] - R(0)
            assert 1 <= h <= max_grid[0] and 1 <= w <= max_grid[1] and ids[i + 3] == BOI
            codes = ids[i + 4 : i + 4 + h * w]
            assert len(codes) == h * w and all(OFFSET <= c < OFFSET + CODEBOOK for c in codes)
            assert ids[i + 4 + h * w] == EOI
            images.append((h, w))
            i += 5 + h * w
            continue
        assert not OFFSET <= token < OFFSET + CODEBOOK and token not in (M, BOI, EOI) and not R(0) <= token <= R(47)
        i += 1
    return images


# ---------------------------------------------------------------------------------------------- the grammar


def test_text_frontier_may_open_an_image_and_defers_its_room():
    row = [HI, HI] + [M] * 10  # prompt of 2, 10 generated positions
    plan = plan_row(grammar(), row, 2, 12, 0, 12)
    assert plan[:2] == [(None, True)] * 2
    assert plan[2] == ("text", True)
    assert plan[3:8] == [("plain", False)] * 5  # header + 1 code + <|/image|> must stay free
    assert plan[8:] == [("plain", True)] * 4


def test_frontier_without_room_is_plain_text_and_positions_past_the_region_are_untouched():
    row = [M] * 8
    plan = plan_row(grammar(), row, 0, 4, 0, 8)
    assert plan[0] == ("plain", True) and plan[1:4] == [("plain", True)] * 3
    assert plan[4:] == [(None, True)] * 4


def test_frontier_text_order_commits_text_left_to_right_only():
    row = [HI, HI] + [M] * 10
    plan = plan_row(grammar(text_order="frontier"), row, 2, 12, 0, 12)
    assert plan[2] == ("text", True) and plan[3:] == [("plain", False)] * 9
    row = [SOI, R(2), R(2), BOI, M, OFFSET + 1, M, M] + [M] * 8
    plan = plan_row(grammar(text_order="frontier"), row, 0, 16, 0, 16)
    assert plan[4:8] == [("code", True)] * 4  # an image's codes are still denoised in parallel
    assert plan[8] == ("eoi", True) and plan[9] == ("text", True) and plan[10:] == [("plain", False)] * 6
    with pytest.raises(ValueError, match="interleaved_text"):
        grammar(text_order="sideways")


def test_header_being_written_follows_the_grammar():
    row = [SOI] + [M] * 11  # room for codes: positions 4..11 (8), one of them for <|/image|>
    plan = plan_row(grammar(max_grid=(5, 5)), row, 0, 12, 0, 12)
    assert plan[1] == (("size", 5), True)  # height first
    assert plan[2] == (("size", 5), False)  # width waits for the height
    assert plan[3] == ("boi", True)
    assert plan[4:] == [("plain", False)] * 8
    row[1] = R(3)
    plan = plan_row(grammar(max_grid=(5, 5)), row, 0, 12, 0, 12)
    assert plan[2] == (("size", 2), True)  # 3 * 2 codes + <|/image|> fit in 8 positions, 3 * 3 would not


def test_complete_header_opens_a_code_span_then_image_end_then_text():
    row = [SOI, R(2), R(2), BOI, M, OFFSET + 1, M, M] + [M] * 8
    plan = plan_row(grammar(), row, 0, 16, 0, 16)
    assert plan[4:8] == [("code", True)] * 4
    assert plan[8] == ("eoi", True)
    assert plan[9] == ("text", True) and plan[10:15] == [("plain", False)] * 5 and plan[15] == ("plain", True)
    # the active block only gets its own slice
    assert plan_row(grammar(), row, 0, 16, 8, 12) == plan[8:12]


def test_invalid_committed_sizes_are_clamped_or_rejected():
    row = [SOI, R(9), R(0), BOI] + [M] * 12
    plan = plan_row(grammar(max_grid=(2, 3)), row, 0, 16, 0, 16)
    assert plan[4:6] == [("code", True)] * 2 and plan[6] == ("eoi", True)  # clamped to 2 x 1
    with pytest.raises(ValueError, match="grid height of 9"):
        plan_row(grammar(max_grid=(2, 3), invalid_size="error"), row, 0, 16, 0, 16)
    with pytest.raises(ValueError, match="not a size token"):
        plan_row(grammar(), [SOI, HI, R(1), BOI, M], 0, 5, 0, 5)


def test_max_grid_beyond_the_size_tokens_is_clamped_or_rejected():
    assert grammar(max_grid=(100, 2)).max_grid == (47, 2)
    assert grammar(max_grid=None).max_grid == (47, 47)
    with pytest.raises(ValueError, match="max_grid"):
        grammar(max_grid=(100, 2), invalid_size="error")
    for bad in ((0, 2), (2,), "2x2", (2.0, 2)):
        with pytest.raises(ValueError, match="max_grid"):
            grammar(max_grid=bad)
    with pytest.raises(ValueError, match="invalid_size"):
        grammar(invalid_size="drop")


def test_constraint_masks_logits_and_applies_cfg_on_codes_only():
    g = grammar()
    tokens = torch.tensor([[SOI, R(1), R(2), BOI, M, M, M, M], [UNC, UNC, UNC, UNC, M, M, M, M]])
    logits = torch.randn(2, 8, OFFSET + CODEBOOK)
    constrain = make_constraint(g, [0], 8, 1, cfg_scale=3.0)
    out, allow = constrain(logits, tokens, 0, 8)
    assert out.shape == (1, 8, OFFSET + CODEBOOK) and allow.all()
    finite = torch.isfinite(out[0])
    assert finite[4:6, OFFSET:].all() and not finite[4:6, :OFFSET].any()
    assert torch.equal(finite[6], torch.arange(OFFSET + CODEBOOK) == EOI)
    guided = logits[1] + 3.0 * (logits[0] - logits[1])
    assert torch.allclose(out[0, 4:6, OFFSET:], guided[4:6, OFFSET:])
    assert torch.equal(out[0, 7][finite[7]], logits[0, 7][finite[7]])  # text: conditional logits
    assert not finite[7, OFFSET:].any() and not finite[7, M] and finite[7, SOI] == False  # noqa: E712 (no room)


# ---------------------------------------------------------------------------------------------- end to end


def run(model, processor, **kwargs):
    kwargs = {"gen_length": 32, "steps": 8, "block_length": 16, "cfg_scale": 1.0, **kwargs}
    return model.generate_interleaved("A red cat", processor=processor, **kwargs)


def test_interleaved_run_writes_images_and_text(model, processor):
    out = run(model, processor)
    prompt = processor(text="A red cat", mode="interleaved", return_uncond=False)["input_ids"]
    assert torch.equal(out["sequences"][:, : prompt.shape[1]], prompt)
    generated = out["sequences"][0, prompt.shape[1] :].tolist()
    images = check_grammar(generated)
    assert images, generated
    kinds = [segment["type"] for segment in out["segments"]]
    assert "image" in kinds and "text" in kinds[kinds.index("image") + 1 :]
    for segment in out["segments"]:
        if segment["type"] == "image":
            assert segment["complete"] and len(segment["token_ids"]) == segment["height"] * segment["width"]
        else:
            assert "Hi" in segment["text"]


def test_cached_equals_uncached_and_cfg_and_sampling_keep_the_grammar(model, processor):
    cached = run(model, processor)
    uncached = run(model, processor, use_block_cache=False)
    assert torch.equal(cached["sequences"], uncached["sequences"])
    assert cached["num_forward_passes"] == uncached["num_forward_passes"]
    guided = run(model, processor, cfg_scale=3.0)
    sampled = run(model, processor, temperature=1.0, generator=torch.Generator().manual_seed(0), max_grid=(1, 2))
    for out, grid in ((guided, (47, 47)), (sampled, (1, 2))):
        prompt_length = len(processor(text="A red cat", mode="interleaved", return_uncond=False)["input_ids"][0])
        assert check_grammar(out["sequences"][0, prompt_length:].tolist(), max_grid=grid)


def test_input_ids_without_processor(model, processor):
    ids = processor(text="A red cat", mode="interleaved", return_uncond=False)["input_ids"]
    out = model.generate_interleaved(input_ids=ids[0], gen_length=32, steps=8, block_length=16)
    assert out["segments"] is None
    assert torch.equal(out["sequences"], run(model, processor)["sequences"])


def test_processor_interleaved_template(processor):
    batch = processor(text="Hello", mode="interleaved")
    sys = T("<role>", "SYSTEM", "</role>", "You are a [UNK] generation assistant .", "<role>", "HUMAN", "</role>")
    assert batch["input_ids"][0].tolist() == sys + T("Hello", "<role>", "ASSISTANT", "</role>")
    assert batch["uncond_input_ids"][0].tolist() == sys + T("<uncondition>", "<role>", "ASSISTANT", "</role>")
    assert processor.system_prompts.get("interleaved") is None  # the default of DEFAULT_SYSTEM_PROMPTS
    with pytest.raises(ValueError, match="text"):
        processor(mode="interleaved")


def test_bad_input_names_the_argument(model, processor):
    ids = processor(text="A red cat", mode="interleaved", return_uncond=False)["input_ids"]
    cases = [
        (dict(), "prompt"),
        (dict(prompt="A red cat", input_ids=ids), "prompt"),
        (dict(prompt=["A red cat"], processor=processor), "prompt"),
        (dict(input_ids=ids, cfg_scale=-1.0), "cfg_scale"),
        (dict(input_ids=ids, cfg_scale=2.0), "cfg_scale"),
        (dict(input_ids=ids.repeat(2, 1)), "input_ids"),
        (dict(input_ids=ids.float()), "input_ids"),
        (dict(input_ids=ids, max_grid=(0, 2)), "max_grid"),
        (dict(input_ids=ids, invalid_size="drop"), "invalid_size"),
        (dict(input_ids=ids, gen_length=0), "gen_length"),
        (dict(input_ids=ids, gen_length=5000), "gen_length"),
        (dict(input_ids=ids, images=[1]), "images"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            model.generate_interleaved(**kwargs)
    with pytest.raises(ValueError, match="processor"):
        model.generate_interleaved("A red cat")


def test_saved_composite_generates_interleaved_without_plugin(tmp_path, model, processor):
    ids = processor(text="A red cat", mode="interleaved", return_uncond=False)["input_ids"]
    model.save_pretrained(tmp_path)
    torch.save(ids, tmp_path / "ids.pt")
    result = run_without_plugin(
        f"""
        import torch
        from transformers import AutoModel
        folder = {str(tmp_path)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        out = model.generate_interleaved(input_ids=torch.load(folder + "/ids.pt"), gen_length=32, steps=8,
                                         block_length=16)
        print(out["sequences"][0].tolist())
        """
    )
    # The saved folder has no logit bias hook: compare with the unbiased model.
    reloaded = LLaDA2UniForConditionalGeneration.from_pretrained(tmp_path).eval()
    expected = reloaded.generate_interleaved(input_ids=ids, gen_length=32, steps=8, block_length=16)["sequences"]
    assert result.stdout.strip().splitlines()[-1] == str(expected[0].tolist())
