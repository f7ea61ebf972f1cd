"""LLaDA2UniProcessor: prompt templates, image blocks, batching, chat template, splitting, saving/loading, bad input."""

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import AutoProcessor, PreTrainedTokenizerFast

from conftest import run_without_plugin
from transformers_llada_uni import LLaDA2UniImageProcessor, LLaDA2UniProcessor
from transformers_llada_uni.modeling_llada2_uni import LLaDA2UniForConditionalGeneration
from transformers_llada_uni.processing_llada2_uni import DEFAULT_CHAT_TEMPLATE
from transformers_llada_uni.prompting_llada2_uni import ASSISTANT_TURN, system_turn

# --------------------------------------------------------------------------------------------------------------------
# A tiny in-process tokenizer shaped like the fixture's: WordLevel, special tokens split first, no post-processor.
# --------------------------------------------------------------------------------------------------------------------

WORDS = (
    "[UNK] You are a an text - to image generation assistant . multimodal understanding editing with thinking process "
    "SYSTEM HUMAN ASSISTANT What is shown ? A red cat Make it blue and green sky detailed off Hello Hi there ! "
    "Compare these I see"
).split()
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mask|>", "<|image|>", "<|/image|>", "<boi>", "<uncondition>",
            "<role>", "</role>", "<|role_end|>"]
NUM_RESERVED = 48
RESERVED = [f"<|reserved_token_{n}|>" for n in range(NUM_RESERVED)]
OFFSET, CODEBOOK = 160, 32
VOCAB = {word: index for index, word in enumerate(WORDS)}
VOCAB.update({token: 80 + index for index, token in enumerate(SPECIALS)})
VOCAB.update({token: 96 + index for index, token in enumerate(RESERVED)})
VOCAB[" "] = 79  # only the space-preserving tokenizer produces it

SOI, EOI, BOI, UNC = VOCAB["<|image|>"], VOCAB["<|/image|>"], VOCAB["<boi>"], VOCAB["<uncondition>"]
PAD = VOCAB["<|endoftext|>"]


def make_tokenizer(keep_spaces=False, specials=None):
    specials = SPECIALS + RESERVED if specials is None else specials
    vocab = {k: v for k, v in VOCAB.items() if k in WORDS or k in specials or k == " "}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    if keep_spaces:  # every space becomes a token: the tests then see the exact spacing of the templates
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(" ", behavior="isolated"), pre_tokenizers.Punctuation(behavior="isolated")]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    names = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                 mask_token="<|mask|>")
    names = {k: v for k, v in names.items() if v in specials}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", **names)


def make_processor(tokenizer=None, **kwargs):
    kwargs.setdefault("image_token_offset", OFFSET)
    kwargs.setdefault("codebook_size", CODEBOOK)
    kwargs.setdefault("image_processor", LLaDA2UniImageProcessor())
    return LLaDA2UniProcessor(tokenizer=tokenizer or make_tokenizer(), **kwargs)


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def spaced():
    return make_processor(make_tokenizer(keep_spaces=True))


def T(*tokens):
    """Hand-written expected ids: every argument is one token string (words split on spaces)."""
    out = []
    for item in tokens:
        out.extend(VOCAB[t] for t in ([item] if item in VOCAB else item.split()))
    return out


def R(n):
    return VOCAB[f"<|reserved_token_{n}|>"]


def header(h, w):
    return [SOI, R(h), R(w), BOI]


def placeholder_block(h, w):
    return header(h, w) + [SOI] * (h * w) + [EOI]


def code_block(h, w, codes):
    return header(h, w) + [OFFSET + c for c in codes] + [EOI]


SYS_U = T("<role>", "SYSTEM", "</role>", "You are a multimodal understanding assistant .", "<role>", "HUMAN", "</role>")
SYS_T2I = T("<role>", "SYSTEM", "</role>", "You are a text - to - image generation assistant .", "<role>", "HUMAN",
            "</role>")
SYS_THINK = T("<role>", "SYSTEM", "</role>", "You are a text - to - image generation assistant with a thinking",
              "process .", "<role>", "HUMAN", "</role>")
SYS_EDIT = T("<role>", "SYSTEM", "</role>", "You are an image editing assistant .", "<role>", "HUMAN", "</role>")
ASSISTANT = T("<role>", "ASSISTANT", "</role>")


def rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def codes(h, w, start=0):
    return torch.arange(start, start + h * w).remainder(CODEBOOK).reshape(h, w)


def row(batch, key="input_ids"):
    return batch[key][0].tolist()


# --------------------------------------------------------------------------------------------------------------------
# Special ids and templates
# --------------------------------------------------------------------------------------------------------------------


def test_special_ids_come_from_the_tokenizer(processor):
    assert (processor.image_start_token_id, processor.image_end_token_id, processor.boi_token_id) == (SOI, EOI, BOI)
    assert processor.uncondition_token_id == UNC
    assert processor.mask_token_id == VOCAB["<|mask|>"] and processor.eos_token_id == PAD == processor.pad_token_id
    assert processor.num_reserved_tokens == NUM_RESERVED
    assert [processor.reserved_token_id(n) for n in range(NUM_RESERVED)] == [R(n) for n in range(NUM_RESERVED)]
    assert processor.tokenizer.padding_side == "left"


def test_understanding_one_image_placeholders_and_pixels(processor):
    # 64x96 px with image_mode "none": a 4x6 grid of 16-px patches, 24 placeholders.
    out = processor(text="What is shown?", images=rgb(64, 96), image_mode="none")
    assert row(out) == SYS_U + placeholder_block(4, 6) + T("What is shown ?") + ASSISTANT
    assert out["attention_mask"].tolist() == [[1] * len(row(out))]
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert out["pixel_values"].shape == (24, 3 * 16 * 16)
    assert set(out.keys()) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"}


def test_understanding_default_resize_path(processor):
    # The understanding path smart-resizes up to >= 128^2 px in multiples of 32: 100x60 -> 192x128 -> 12x8 patches.
    out = processor(text="What is shown?", images=Image.fromarray(rgb(100, 60)))
    assert out["image_grid_thw"].tolist() == [[1, 12, 8]]
    assert row(out) == SYS_U + placeholder_block(12, 8) + T("What is shown ?") + ASSISTANT


def test_understanding_without_image_and_system_prompt_option():
    custom = make_processor(system_prompts={"understanding": "detailed thinking off"})
    expected = T("<role>", "SYSTEM", "</role>", "detailed thinking off", "<role>", "HUMAN", "</role>", "Hi",
                 "<role>", "ASSISTANT", "</role>")
    assert row(custom(text="Hi")) == expected
    assert row(make_processor()(text="Hi", system_prompt="detailed thinking off")) == expected
    assert row(custom.build_understanding_prompt("Hi")) == expected


def test_understanding_several_images_in_order_at_message_start(processor):
    grids = [codes(2, 3), codes(1, 2, start=7)]
    out = processor(text="Compare these", image_tokens=grids)
    expected = SYS_U + code_block(2, 3, range(6)) + code_block(1, 2, [7, 8]) + T("Compare these") + ASSISTANT
    assert row(out) == expected
    assert "pixel_values" not in out
    # `<image>` markers place the blocks inside the message instead.
    out = processor(text="I see <image> and <image> ?", image_tokens=grids)
    assert row(out) == SYS_U + T("I see") + code_block(2, 3, range(6)) + T("and") + code_block(1, 2, [7, 8]) + T(
        "?") + ASSISTANT


@pytest.mark.parametrize(
    "form",
    [
        lambda c: c,                                            # [h, w] tensor
        lambda c: (2, 3, c.reshape(-1).tolist()),               # (h, w, codes)
        lambda c: {"token_ids": c.reshape(1, -1), "h": 2, "w": 3},          # original generate_image output
        lambda c: {"token_ids": c.reshape(-1), "height": 2, "width": 3},    # our generate_image_tokens output
        lambda c: c.numpy(),                                    # numpy grid
    ],
)
def test_image_tokens_forms(processor, form):
    out = processor(text="What is shown?", image_tokens=form(codes(2, 3, start=5)))
    assert row(out) == SYS_U + code_block(2, 3, range(5, 11)) + T("What is shown ?") + ASSISTANT


def test_t2i_cond_and_uncond(processor):
    out = processor(text="A red cat", mode="t2i", grid=(4, 3))
    assert row(out) == SYS_T2I + T("A red cat") + ASSISTANT + header(4, 3)
    assert row(out, "uncond_input_ids") == SYS_T2I + [UNC] + ASSISTANT + header(4, 3)
    assert out["uncond_attention_mask"].tolist() == [[1] * len(row(out, "uncond_input_ids"))]
    # Pixels: 32 px per token (image_processor.generation_grid); the helper is the same call.
    assert row(processor(text="A red cat", mode="t2i", height=128, width=96)) == row(out)
    helper = processor.build_t2i_prompt("A red cat", 128, 96)
    assert {k: v.tolist() for k, v in helper.items()} == {k: v.tolist() for k, v in out.items()}
    assert "uncond_input_ids" not in processor(text="A red cat", mode="t2i", grid=(4, 3), return_uncond=False)


def test_t2i_default_size_is_1024_px(processor):
    assert row(processor(text="A red cat", mode="t2i"))[-4:] == header(32, 32)


def test_t2i_thinking(processor):
    out = processor.build_t2i_prompt("A red cat", grid=(2, 2), thinking=True)
    assert row(out) == SYS_THINK + T("A red cat") + ASSISTANT  # phase 1: the model writes its reasoning first
    assert row(out, "uncond_input_ids") == SYS_THINK + [UNC] + ASSISTANT + header(2, 2)


def test_role_templates_keep_the_reference_bytes():
    # The test tokenizer splits on spaces, so the prompts above cannot tell the unspaced variant from the spaced one.
    assert system_turn("Be brief.") == "<role>SYSTEM</role> Be brief. <role>HUMAN</role>"
    assert system_turn("Be brief.", spaced=False) == "<role>SYSTEM</role>Be brief.<role>HUMAN</role>"
    assert ASSISTANT_TURN == "<role>ASSISTANT</role>"


def test_t2i_thinking_prefix(processor):
    prompt = processor.build_t2i_prompt("A red cat", grid=(2, 2), thinking=True)["input_ids"]
    reasoning = T("red cat and blue sky")
    for generated in (reasoning + header(5, 5), reasoning + [BOI], reasoning + [SOI, R(3)] + [BOI] + [PAD]):
        prefix = processor.t2i_thinking_prefix(prompt, torch.tensor(generated), grid=(2, 2))
        assert prefix.tolist() == row({"input_ids": prompt}) + reasoning + header(2, 2)


def test_edit_templates(processor):
    out = processor.build_edit_prompt("Make it blue", image_tokens=codes(2, 2), image_cfg=True)
    block = code_block(2, 2, range(4))
    assert row(out) == SYS_EDIT + block + T("Make it blue") + ASSISTANT + header(2, 2)
    assert row(out, "uncond_input_ids") == SYS_EDIT + block + [UNC] + ASSISTANT + header(2, 2)
    assert row(out, "uncond_image_input_ids") == SYS_EDIT + [SOI] + T("Make it blue") + ASSISTANT + header(2, 2)
    assert "uncond_image_input_ids" not in processor(text="Make it blue", image_tokens=codes(2, 2), mode="edit")


def test_edit_with_pixels_uses_the_edit_crop_and_same_output_grid(processor):
    # The edit path cuts the candidate size (<= 256 cells of 32 px) whose aspect ratio matches best out of the
    # unscaled image: 128x64 px (1:2) -> 704x352 px (22x11 cells, black borders) -> grid 44x22, output header 44x22.
    out = processor(text="Make it blue", images=rgb(128, 64), mode="edit")
    assert out["image_grid_thw"].tolist() == [[1, 44, 22]]
    assert row(out) == SYS_EDIT + placeholder_block(44, 22) + T("Make it blue") + ASSISTANT + header(44, 22)
    override = processor(text="Make it blue", images=rgb(128, 64), mode="edit", grid=(3, 3))
    assert row(override)[-4:] == header(3, 3)


def test_multi_reference_edit(processor):
    refs = [codes(1, 2), codes(2, 1, start=4)]
    out = processor(text="Make it blue", image_tokens=refs, mode="edit", image_cfg=True)
    blocks = code_block(1, 2, [0, 1]) + code_block(2, 1, [4, 5])
    assert row(out) == SYS_EDIT + blocks + T("Make it blue") + ASSISTANT + header(1, 2)
    assert row(out, "uncond_input_ids") == SYS_EDIT + blocks + [UNC] + ASSISTANT + header(1, 2)
    assert row(out, "uncond_image_input_ids") == SYS_EDIT + [SOI, SOI] + T("Make it blue") + ASSISTANT + header(1, 2)


def test_templates_have_the_exact_spacing(spaced):
    """With a tokenizer that keeps spaces, each template equals the tokenization of its one-line string."""

    def tok(text):
        return spaced.tokenizer(text, add_special_tokens=False)["input_ids"]

    def ph(h, w):
        return f"<|image|><|reserved_token_{h}|><|reserved_token_{w}|><boi>" + "<|image|>" * (h * w) + "<|/image|>"

    hdr = "<|image|><|reserved_token_2|><|reserved_token_3|><boi>"
    out = spaced(text="What is shown?", images=rgb(32, 48), image_mode="none")
    assert row(out) == tok("<role>SYSTEM</role> You are a multimodal understanding assistant. <role>HUMAN</role>"
                           + ph(2, 3) + "What is shown?<role>ASSISTANT</role>")
    assert VOCAB[" "] in row(out)
    out = spaced(text="A red cat", mode="t2i", grid=(2, 3))
    assert row(out) == tok("<role>SYSTEM</role> You are a text-to-image generation assistant. <role>HUMAN</role>"
                           "A red cat<role>ASSISTANT</role>" + hdr)
    assert row(out, "uncond_input_ids") == tok("<role>SYSTEM</role> You are a text-to-image generation assistant. "
                                               "<role>HUMAN</role><uncondition><role>ASSISTANT</role>" + hdr)
    out = spaced(text="A red cat", mode="t2i", grid=(2, 3), thinking=True)
    system = "You are a text-to-image generation assistant with a thinking process."
    assert row(out) == tok(f"<role>SYSTEM</role> {system} <role>HUMAN</role>A red cat<role>ASSISTANT</role>")
    assert row(out, "uncond_input_ids") == tok(  # no spaces around the system text in the phase-2 uncond row
        f"<role>SYSTEM</role>{system}<role>HUMAN</role><uncondition><role>ASSISTANT</role>" + hdr)
    out = spaced(text="Make it blue", images=rgb(64, 96), mode="edit", image_mode="none", image_cfg=True)
    edit = "<role>SYSTEM</role> You are an image editing assistant. <role>HUMAN</role>"
    hdr = "<|image|><|reserved_token_4|><|reserved_token_6|><boi>"
    assert row(out) == tok(edit + ph(4, 6) + "Make it blue<role>ASSISTANT</role>" + hdr)
    assert row(out, "uncond_input_ids") == tok(edit + ph(4, 6) + "<uncondition><role>ASSISTANT</role>" + hdr)
    assert row(out, "uncond_image_input_ids") == tok(edit + "<|image|>Make it blue<role>ASSISTANT</role>" + hdr)


def test_placeholders_match_the_model_mask(processor):
    """The model finds exactly the placeholders (not headers, not the bare `<|image|>` of uncond_img rows)."""
    fake = types.SimpleNamespace(config=types.SimpleNamespace(image_start_token_id=SOI, boi_token_id=BOI))
    out = processor(text=["Make it blue", "Make"], images=[[rgb(64, 32), rgb(32, 32)], rgb(32, 48)], mode="edit",
                    image_mode="none", image_cfg=True)
    mask = LLaDA2UniForConditionalGeneration.image_placeholder_mask(fake, out["input_ids"])
    assert mask.sum(dim=1).tolist() == [8 + 4, 6]
    assert int(mask.sum()) == out["pixel_values"].shape[0]
    assert not LLaDA2UniForConditionalGeneration.image_placeholder_mask(fake, out["uncond_image_input_ids"]).any()


# --------------------------------------------------------------------------------------------------------------------
# The T2I fixture with the public tokenizer
# --------------------------------------------------------------------------------------------------------------------


def test_t2i_prompt_reproduces_the_parity_fixture(parity_dir):
    expected = json.loads((parity_dir / "expected" / "t2i_port.json").read_text())
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(parity_dir / "checkpoint" / "tokenizer.json"))
    proc = LLaDA2UniProcessor(image_processor=LLaDA2UniImageProcessor(), tokenizer=tokenizer,
                              image_token_offset=expected["image_token_offset"])
    h, w = expected["h"], expected["w"]
    for out in (proc(text=expected["prompt"], mode="t2i", grid=(h, w)),
                proc.build_t2i_prompt(expected["prompt"], height=32 * h, width=32 * w)):
        assert row(out) == expected["cond_input_ids"]
        assert row(out, "uncond_input_ids") == expected["uncond_input_ids"]
    assert row(proc(text=expected["prompt"], mode="t2i"))[-3:-1] == [proc.reserved_token_id(32)] * 2  # 1024 px
    assert proc.mask_token_id == expected["mask_token_id"]
    assert proc.image_end_token_id == expected["end_of_image_token_id"]


# --------------------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------------------


def test_batch_is_left_padded_and_rows_match_single_calls(processor):
    texts = ["Hi", "What is shown?"]
    images = [None, [rgb(32, 32), rgb(32, 64, seed=1)]]
    out = processor(text=texts, images=images, image_mode="none")
    singles = [processor(text="Hi"), processor(text="What is shown?", images=images[1], image_mode="none")]
    width = out["input_ids"].shape[1]
    for index, single in enumerate(singles):
        ids = row(single)
        pad = width - len(ids)
        assert out["input_ids"][index].tolist() == [PAD] * pad + ids
        assert out["attention_mask"][index].tolist() == [0] * pad + [1] * len(ids)
    assert torch.equal(out["pixel_values"], singles[1]["pixel_values"])
    assert out["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]


def test_batch_t2i_and_edit_uncond_rows_are_padded_separately(processor):
    out = processor(text=["A red cat", "Hi"], mode="t2i", grid=(2, 2))
    cond = [SYS_T2I + T(p) + ASSISTANT + header(2, 2) for p in ("A red cat", "Hi")]
    assert out["input_ids"].tolist() == [cond[0], [PAD] * 2 + cond[1]]
    assert out["attention_mask"].tolist() == [[1] * len(cond[0]), [0] * 2 + [1] * len(cond[1])]
    uncond = SYS_T2I + [UNC] + ASSISTANT + header(2, 2)
    assert out["uncond_input_ids"].tolist() == [uncond, uncond]
    edit = processor(text=["Make it blue", "Make"], image_tokens=[codes(1, 1), [codes(1, 2), codes(1, 1)]],
                     mode="edit", image_cfg=True)
    assert edit["input_ids"].shape[0] == edit["uncond_input_ids"].shape[0] == edit["uncond_image_input_ids"].shape[0]
    assert edit["uncond_input_ids"][0].tolist()[:2] == [PAD, PAD]  # the one-image row is shorter by one 1x1 block
    assert edit["uncond_image_input_ids"][1].tolist()[-4:] == header(1, 2)


def test_return_tensors_none_gives_lists(processor):
    out = processor(text=["Hi", "Hi there"], return_tensors=None)
    assert isinstance(out["input_ids"], list) and len(out["input_ids"][0]) == len(out["input_ids"][1])
    assert out["input_ids"][0][0] == PAD


# --------------------------------------------------------------------------------------------------------------------
# Chat template
# --------------------------------------------------------------------------------------------------------------------


def test_chat_template_one_turn_is_the_understanding_template(processor):
    image = rgb(32, 64)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is shown?"},
                                             {"type": "image", "image": image}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == ("<role>SYSTEM</role> You are a multimodal understanding assistant. <role>HUMAN</role><image>"
                    "What is shown?<role>ASSISTANT</role>")
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    direct = processor(text="What is shown?", images=image)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        assert torch.equal(out[key], direct[key]), key
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True).tolist() == [row(direct)]


def test_chat_template_multi_turn_and_system(processor):
    conversation = [
        {"role": "system", "content": "detailed thinking off"},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare these"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "I see a red cat"}]},
        {"role": "user", "content": "What is shown?"},
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert text == ("<role>SYSTEM</role> detailed thinking off <role>HUMAN</role><image><image>Compare these"
                    "<role>ASSISTANT</role>I see a red cat<role>HUMAN</role>What is shown?<role>ASSISTANT</role>")
    assert not processor.apply_chat_template(conversation).endswith("<role>ASSISTANT</role>")
    custom = make_processor(system_prompts={"understanding": "detailed thinking off"})
    assert custom.apply_chat_template(conversation[1:2]).startswith("<role>SYSTEM</role> detailed thinking off <role>")
    assert processor.apply_chat_template(conversation[1:2], system_prompt="Hi").startswith("<role>SYSTEM</role> Hi ")
    # Tokenized with code grids written in place of the `<image>` markers (mode "raw": the text is the full prompt).
    out = processor(text=text, mode="raw", image_tokens=[codes(1, 1), codes(1, 1, start=3)])
    assert row(out) == (
        T("<role>", "SYSTEM", "</role>", "detailed thinking off", "<role>", "HUMAN", "</role>")
        + code_block(1, 1, [0]) + code_block(1, 1, [3]) + T("Compare these") + ASSISTANT + T("I see a red cat")
        + T("<role>", "HUMAN", "</role>", "What is shown ?") + ASSISTANT
    )
    with pytest.raises(Exception, match="role"):
        processor.apply_chat_template([{"role": "tool", "content": "Hi"}])


def test_default_chat_template_is_set_and_saved(processor, tmp_path):
    assert processor.chat_template == DEFAULT_CHAT_TEMPLATE
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE


def _token_text(processor, token_id):
    """What a token covers in a rendered prompt of the test tokenizer (every vocabulary entry is its own text)."""
    return processor.tokenizer.convert_ids_to_tokens(token_id)


def test_raw_offsets_cover_the_rendered_text(processor):
    texts = ["<role>SYSTEM</role> Hi <role>HUMAN</role><image>What is  shown?<role>ASSISTANT</role>A red cat",
             "Hi there <image> and <image>!"]
    grids = [[codes(1, 2)], [codes(1, 1), codes(2, 1, start=5)]]
    for side in ("left", "right"):
        out = processor(text=texts, mode="raw", image_tokens=grids, padding_side=side, return_offsets_mapping=True)
        assert out["offset_mapping"].shape == (*out["input_ids"].shape, 2)
        for text, ids, mask, spans in zip(texts, out["input_ids"].tolist(), out["attention_mask"].tolist(),
                                          out["offset_mapping"].tolist()):
            assert all(span == [0, 0] for span, kept in zip(spans, mask) if not kept)  # padding
            padded = 0 in mask
            assert (mask[0] == 0) == (side == "left" and padded) and (mask[-1] == 0) == (side == "right" and padded)
            kept = [(token, span) for token, span, on in zip(ids, spans, mask) if on]
            markers = [m for m in range(len(text)) if text.startswith("<image>", m)]
            covered, blocks = [False] * len(text), []
            for token, (start, end) in kept:
                assert 0 <= start < end <= len(text)
                if text[start:end] == "<image>":
                    blocks.append(start)  # every id of an image block carries its marker's span
                else:
                    assert text[start:end] == _token_text(processor, token)
                covered[start:end] = [True] * (end - start)
            assert [start for index, start in enumerate(blocks) if index == 0 or blocks[index - 1] != start] == markers
            assert all(done or text[index].isspace() for index, done in enumerate(covered))
            assert [s for _, (s, _) in kept] == sorted(s for _, (s, _) in kept)
        # The ids are those of the call without offsets.
        plain = processor(text=texts, mode="raw", image_tokens=grids, padding_side=side)
        assert torch.equal(plain["input_ids"], out["input_ids"]) and "offset_mapping" not in plain
    block = processor(text="Hi <image>", mode="raw", image_tokens=codes(1, 2), return_offsets_mapping=True)
    assert row(block)[1:] == code_block(1, 2, [0, 1]) and row(block, "offset_mapping")[1:] == [[3, 10]] * 7


def test_raw_offsets_follow_bos_truncation_and_lists(processor):
    text = "Hi there <image>!"
    lists = processor(text=text, mode="raw", images=rgb(32, 32), return_offsets_mapping=True, add_bos=True,
                      return_tensors=None, return_text_replacement_offsets=True)
    spans = lists["offset_mapping"][0]
    assert spans[0] == (0, 0) and spans[1:3] == [(0, 2), (3, 8)] and spans[-1] == (16, 17)
    assert set(spans[3:-1]) == {(9, 16)} and len(spans) == len(lists["input_ids"][0])
    assert lists["text_replacement_offsets"] == [[]]  # the text is tokenized as given, nothing of it is replaced
    cut = processor(text="What is shown ? <image>", mode="raw", image_tokens=codes(1, 1), truncation=True,
                    max_length=30, padding="max_length", return_offsets_mapping=True, padding_side="right")
    full = processor(text="What is shown ? <image>", mode="raw", image_tokens=codes(1, 1),
                     return_offsets_mapping=True)
    length = full["input_ids"].shape[1]
    assert cut["offset_mapping"][0, :length].tolist() == full["offset_mapping"][0].tolist()
    assert cut["offset_mapping"][0, length:].eq(0).all() and cut["input_ids"].shape[1] == 30
    for key in ("return_offsets_mapping", "return_text_replacement_offsets"):
        with pytest.raises(ValueError, match=f"`{key}` needs mode 'raw'"):
            processor(text="Hi", **{key: True})


def _answer_ids(processor, answers):
    return [i for answer in answers for i in processor.tokenizer(answer, add_special_tokens=False)["input_ids"]]


def test_assistant_mask_selects_the_assistant_answers(processor):
    with_image = [
        {"role": "user", "content": [{"type": "image", "image": rgb(32, 64)},
                                     {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red cat"}]},
        {"role": "user", "content": "Make it blue"},
        {"role": "assistant", "content": "I see a blue cat"},
    ]
    text_only = [
        {"role": "system", "content": "detailed thinking off"},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there!"},
    ]
    for conversation, answers in ((with_image, ["A red cat", "I see a blue cat"]), (text_only, ["Hi there!"])):
        out = processor.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        assert isinstance(out["assistant_masks"], torch.Tensor) and "offset_mapping" not in out
        assert out["input_ids"][0][out["assistant_masks"][0].bool()].tolist() == _answer_ids(processor, answers)
        # The ids are those of the chat without masks.
        plain = processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
        assert torch.equal(plain["input_ids"], out["input_ids"])
    for side in ("left", "right"):
        batch = processor.apply_chat_template([with_image, text_only], tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True, padding_side=side)
        masks = batch["assistant_masks"].bool()
        assert masks.shape == batch["input_ids"].shape and not masks[batch["attention_mask"] == 0].any()
        assert batch["input_ids"][0][masks[0]].tolist() == _answer_ids(processor, ["A red cat", "I see a blue cat"])
        assert batch["input_ids"][1][masks[1]].tolist() == _answer_ids(processor, ["Hi there!"])


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


def test_split_generation_round_trip(processor):
    grid = codes(2, 3, start=3)
    prompt = processor(text="A red cat", image_tokens=grid, mode="edit")["input_ids"][0].tolist()
    generated = T("I see a") + header(1, 2) + [OFFSET + 30, OFFSET + 31] + [EOI] + T("red cat") + header(2, 2) + [
        OFFSET + 1] + [PAD]
    segments = processor.split_generation(torch.tensor(generated))
    assert [s["type"] for s in segments] == ["text", "image", "text", "image"]
    assert segments[0]["text"] == "I see a" and segments[2]["text"] == "red cat"
    assert (segments[1]["height"], segments[1]["width"], segments[1]["token_ids"].tolist()) == (1, 2, [30, 31])
    assert segments[1]["complete"] and not segments[3]["complete"] and segments[3]["token_ids"].tolist() == [1]
    # The prompt's own image block (codes written by the processor) comes back as the same grid.
    image = [s for s in processor.split_generation(prompt) if s["type"] == "image"]
    assert len(image) == 2 and image[0]["token_ids"].tolist() == grid.reshape(-1).tolist()
    assert (image[1]["height"], image[1]["width"], image[1]["token_ids"].numel()) == (2, 3, 0)  # the output header
    # Image ids without a header, and 2-D input (one list per row).
    bare = processor.split_generation([[OFFSET + 4, OFFSET + 5] + T("Hi")])
    assert bare[0][0]["height"] is None and bare[0][0]["token_ids"].tolist() == [4, 5] and bare[0][1]["text"] == "Hi"


def test_decode_delegates_to_the_tokenizer(processor):
    ids = T("Hi there !")
    assert processor.decode(ids) == processor.tokenizer.decode(ids) == "Hi there !"
    assert processor.batch_decode([ids, T("Hi")]) == ["Hi there !", "Hi"]


# --------------------------------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------------------------------


def _saved(tmp_path):
    proc = make_processor(system_prompts={"understanding": "detailed thinking off"})
    proc.save_pretrained(tmp_path)
    return proc


def test_save_load_round_trip(tmp_path):
    proc = _saved(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_llada2_uni.LLaDA2UniProcessor"}
    assert config["image_processor"]["auto_map"]["AutoImageProcessor"] == (
        "image_processing_llada2_uni.LLaDA2UniImageProcessor")
    assert (config["image_token_offset"], config["codebook_size"]) == (OFFSET, CODEBOOK)
    assert {"processing_llada2_uni.py", "prompting_llada2_uni.py", "image_processing_llada2_uni.py"} <= {
        p.name for p in tmp_path.glob("*.py")}
    for loaded in (LLaDA2UniProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is LLaDA2UniProcessor
        assert (loaded.image_token_offset, loaded.codebook_size, loaded.system_prompts) == (
            OFFSET, CODEBOOK, {"understanding": "detailed thinking off"})
        assert loaded.tokenizer.padding_side == "left"
        for kwargs in (dict(text="What is shown?", image_tokens=codes(2, 2)),
                       dict(text="A red cat", mode="t2i", grid=(3, 2)),
                       dict(text=["Hi", "What is shown?"], images=[rgb(32, 32), rgb(64, 32)])):
            a, b = proc(**kwargs), loaded(**kwargs)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kwargs


def test_auto_processor_loads_without_plugin(tmp_path):
    proc = _saved(tmp_path)
    image = rgb(64, 32)
    np.save(tmp_path / "image.npy", image)
    expected = {
        "understanding": proc(text="What is shown?", images=image)["input_ids"].tolist(),
        "t2i": proc(text="A red cat", mode="t2i", grid=(3, 2))["uncond_input_ids"].tolist(),
        "chat": proc.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True),
    }
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    result = run_without_plugin(
        f"""
        import json
        import numpy as np
        from transformers import AutoProcessor
        path = {str(tmp_path)!r}
        proc = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        assert type(proc).__name__ == "LLaDA2UniProcessor", type(proc)
        assert type(proc.image_processor).__name__ == "LLaDA2UniImageProcessor", type(proc.image_processor)
        assert "transformers_modules" in type(proc).__module__, type(proc).__module__
        expected = json.load(open(path + "/expected.json"))
        image = np.load(path + "/image.npy")
        out = proc(text="What is shown?", images=image)
        assert out["input_ids"].tolist() == expected["understanding"]
        assert proc(text="A red cat", mode="t2i", grid=(3, 2))["uncond_input_ids"].tolist() == expected["t2i"]
        chat = proc.apply_chat_template([{{"role": "user", "content": "Hi"}}], add_generation_prompt=True)
        assert chat == expected["chat"], chat
        print("OK")
        """,
        timeout=300,
    )
    assert "OK" in result.stdout


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(text="Hi", images=rgb(8, 64)), "`images`.*smaller than one 16-px patch"),
        (dict(text="Hi", images=np.zeros((0, 32, 3), np.uint8)), "`images`.*empty"),
        (dict(text="Hi", images=np.zeros((32, 32), np.uint8)), "`images`"),
        (dict(text="Hi", images=np.zeros((32, 32, 2), np.uint8)), "`images`"),
        (dict(text="Hi", images=np.zeros((32, 32, 3), np.float32)), "`images`"),
        (dict(text="Hi", images=[[rgb(32, 32)], [rgb(32, 32)]]), "`images` has 2 entries for 1 texts"),
        (dict(text="Hi", mode="video"), "`mode`"),
        (dict(text="Hi", images=rgb(32, 32), image_mode="crop"), "`image_mode`"),
        (dict(text="Hi", image_tokens=(2, 2, [1, 2, 3])), "`image_tokens`.*needs 4 codes"),
        (dict(text="Hi", image_tokens=torch.full((2, 2), CODEBOOK)), "`image_tokens` codes must lie in"),
        (dict(text="Hi", image_tokens=torch.full((1, 2), -1)), "`image_tokens` codes must lie in"),
        (dict(text="Hi", image_tokens=torch.zeros(1, NUM_RESERVED, dtype=torch.long)), "`image_tokens`: a grid width"),
        (dict(text="Hi", images=rgb(32, 32), image_tokens=codes(1, 1)), "either `images` or `image_tokens`"),
        (dict(text="A red cat", mode="t2i", grid=(NUM_RESERVED, 2)), "`height`"),
        (dict(text="A red cat", mode="t2i", grid=(2, 0)), "`grid` width"),
        (dict(text="A red cat", mode="t2i", height=-32, width=64), "`height`"),
        (dict(text="A red cat", mode="t2i", height=64, width=0), "`width`"),
        (dict(text="A red cat", mode="t2i", height=64, width=50), "`width`.*multiple of 32"),
        (dict(text="A red cat", mode="t2i", grid=(2, 2), height=64), "either `grid`"),
        (dict(text="A red cat", mode="t2i", images=rgb(32, 32)), "takes no `images`"),
        (dict(text="Make it blue", mode="edit"), "needs a source image"),
        (dict(text="Hi", grid=(2, 2)), "only used by modes"),
        (dict(text="Hi", thinking=True), "`thinking`"),
        (dict(text="<image> <image>", image_tokens=codes(1, 1)), "2 <image> marker"),
        (dict(text="Hi", mode="raw", image_tokens=codes(1, 1)), "0 <image> marker"),
        (dict(text=["Hi", 3]), "`text`"),
        (dict(mode="t2i"), "`text` is required"),
        (dict(text="Hi", pading_side="right"), "unexpected argument.*pading_side"),
        (dict(text="Hi", padding_side="middle"), "`padding_side`"),
        (dict(text="Hi", padding="most"), "`padding`"),
        (dict(text="Hi", truncation=True), "need `max_length`"),
        (dict(text="Hi", stride=2), "stride"),
        (dict(text="Hi", return_offsets_mapping=True), "return_offsets_mapping"),
        (dict(text="Hi", images=rgb(32, 32), crop_size=3), "crop_size"),
        (dict(text="Hi", images=rgb(32, 32), min_pixels=4096, max_pixels=1024), "`min_pixels`"),
        (dict(text="Hi", images=rgb(32, 32), image_mode="edit", images_kwargs={"mode": "none"}), "disagree"),
        (dict(), "needs `text`, `images` or `image_tokens`"),
        (dict(text="Hi", videos=[1]), "`videos`"),
    ],
)
def test_bad_inputs_raise(processor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        processor(**kwargs)


def test_image_grid_beyond_reserved_tokens_names_images(processor):
    with pytest.raises(ValueError, match="`images`: a grid height of 50 tokens"):
        processor(text="Hi", images=rgb(800, 32), image_mode="none")


def test_positional_call_is_rejected(processor):
    with pytest.raises(TypeError):
        processor("Hi")


def test_missing_special_tokens():
    with pytest.raises(ValueError, match=r"lacks .*<boi>"):
        make_processor(make_tokenizer(specials=[s for s in SPECIALS + RESERVED if s != "<boi>"]))
    proc = make_processor(make_tokenizer(specials=[s for s in SPECIALS + RESERVED if s != "<uncondition>"]))
    assert proc.uncondition_token_id is None
    assert row(proc(text="Hi"))  # understanding needs no <uncondition>
    with pytest.raises(ValueError, match="<uncondition>"):
        proc(text="A red cat", mode="t2i", grid=(2, 2))
    assert "uncond_input_ids" not in proc(text="A red cat", mode="t2i", grid=(2, 2), return_uncond=False)


def test_bad_init_and_missing_offset():
    with pytest.raises(ValueError, match="`image_token_offset`"):
        make_processor(image_token_offset=-5)
    with pytest.raises(ValueError, match="`codebook_size`"):
        make_processor(codebook_size=0)
    with pytest.raises(ValueError, match="`system_prompts`"):
        make_processor(system_prompts={"chat": "Hi"})
    no_offset = make_processor(image_token_offset=None)
    with pytest.raises(ValueError, match="`image_token_offset`"):
        no_offset(text="Hi", image_tokens=codes(1, 1))
    with pytest.raises(ValueError, match="`image_token_offset`"):
        no_offset.split_generation([1, 2])


def test_input_grids_never_exceed_the_size_tokens(processor):
    """An image whose understanding or edit grid would need a size token the tokenizer lacks is scaled to fit."""
    largest = NUM_RESERVED - 1
    wide = np.zeros((800, 800 * 3, 3), np.uint8)
    for mode in ("understanding", "edit"):
        batch = processor(text="Describe it", images=wide, mode=mode)
        _, h, w = batch["image_grid_thw"][0].tolist()
        assert max(h, w) <= largest and h * w > 1
    # The bare image processor (no tokenizer to respect) keeps the release's geometry.
    _, h, w = processor.image_processor.preprocess([wide], mode="understanding")["image_grid_thw"][0].tolist()
    assert max(h, w) > largest


@pytest.mark.parametrize("edit_crop", ["center", "cover"])
def test_edit_grid_is_what_preprocess_gives(processor, edit_crop):
    image_processor = processor.image_processor
    for height, width in ((64, 96), (512, 512), (300, 1100), (1024, 200), (37, 45)):
        image = np.zeros((height, width, 3), np.uint8)
        for limit in (None, 7):
            out = image_processor.preprocess([image], mode="edit", edit_crop=edit_crop, max_grid_side=limit)
            expected = tuple(out["image_grid_thw"][0, 1:].tolist())
            assert image_processor.edit_grid(image, edit_crop=edit_crop, max_grid_side=limit) == expected


# ---------------------------------------------------------------- transformers' processing conventions (issue 18)


def test_padding_truncation_and_grouped_kwargs(processor):
    texts = ["Hi", "What is in this picture today"]
    base = processor(text=texts)
    lengths = base["attention_mask"].sum(-1).tolist()
    assert base["input_ids"].shape[1] == max(lengths) and lengths[0] < lengths[1]
    assert base["attention_mask"][0, 0] == 0  # left padding by default
    right = processor(text=texts, padding_side="right")
    assert right["attention_mask"][0, -1] == 0
    assert right["input_ids"][0, : lengths[0]].tolist() == base["input_ids"][0, -lengths[0]:].tolist()
    wide = processor(text_kwargs={"padding": "max_length", "max_length": max(lengths) + 5}, text=texts)
    assert wide["input_ids"].shape[1] == max(lengths) + 5
    assert processor(text=texts, pad_to_multiple_of=64)["input_ids"].shape[1] == 64
    cut = processor(text=texts, truncation=True, max_length=lengths[0])
    assert cut["input_ids"].shape[1] == lengths[0]
    assert cut["input_ids"][1].tolist() == base["input_ids"][1, : lengths[0]].tolist()  # right truncation side
    lists = processor(text=texts, padding=False, return_tensors=None)
    assert [len(row) for row in lists["input_ids"]] == lengths
    with pytest.raises(ValueError, match="different lengths"):
        processor(text=texts, padding=False)
    assert "attention_mask" not in processor(text=texts, return_attention_mask=False)
    with pytest.raises(ValueError, match="passed two times"):
        processor(text=texts, padding=True, text_kwargs={"padding": False})
    assert processor(text=texts, common_kwargs={"return_tensors": "np"})["input_ids"].__class__ is np.ndarray


def test_truncation_never_cuts_an_image_block(processor):
    row = processor(text="Hi", images=rgb(32, 32))["input_ids"][0].tolist()
    end = row.index(processor.image_end_token_id)
    assert processor(text="Hi", images=rgb(32, 32), truncation=True, max_length=end + 1)["input_ids"].shape[1] == end + 1
    with pytest.raises(ValueError, match="cut into an image block"):
        processor(text="Hi", images=rgb(32, 32), truncation=True, max_length=end)


def test_settings_are_processing_kwargs_with_class_defaults(processor):
    from transformers_llada_uni.processing_llada2_uni import LLaDA2UniProcessorKwargs

    assert LLaDA2UniProcessor.valid_processor_kwargs is LLaDA2UniProcessorKwargs
    for name in ("mode", "thinking", "return_uncond", "image_cfg", "image_mode", "add_bos"):
        assert name in LLaDA2UniProcessorKwargs.__annotations__
    t2i = processor(text="A red cat", mode="t2i", grid=(2, 2))
    assert processor(text="Hi", mode=None)["input_ids"].tolist() == processor(text="Hi")["input_ids"].tolist()
    assert "uncond_input_ids" in t2i and "uncond_input_ids" not in processor(text="A red cat", mode="t2i", grid=(2, 2),
                                                                               return_uncond=False)


def test_image_settings_per_call_match_the_image_processor(processor):
    picture = rgb(40, 72)
    options = {"min_pixels": 64 * 64, "max_pixels": 64 * 64, "do_normalize": False}
    direct = processor.image_processor(picture, max_grid_side=processor.num_reserved_tokens - 1, **options)
    for call in (dict(options), {"images_kwargs": dict(options)}):
        out = processor(text="Hi", images=picture, **call)
        torch.testing.assert_close(out["pixel_values"], direct["pixel_values"], atol=0, rtol=0)
        assert out["image_grid_thw"].tolist() == direct["image_grid_thw"].tolist()
    assert float(out["pixel_values"].min()) >= 0.0  # do_normalize=False: rescaled pixels in [0, 1]
    assert processor.image_processor.do_normalize  # the call changed nothing on the processor


def test_image_processor_size_and_pixel_bounds_are_one_setting(tmp_path):
    proc = LLaDA2UniImageProcessor(min_pixels=32 * 32, max_pixels=96 * 96)
    assert proc.size == {"shortest_edge": 32 * 32, "longest_edge": 96 * 96}
    proc.max_pixels = 128 * 128
    assert proc.size["longest_edge"] == 128 * 128 and proc.max_pixels == 128 * 128
    assert LLaDA2UniImageProcessor(size={"min_pixels": 1024, "max_pixels": 4096}).size == {
        "shortest_edge": 1024, "longest_edge": 4096}
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == proc.size and "min_pixels" not in saved
    # An older config that stores the two bounds under their own names loads unchanged.
    saved.pop("size")
    saved.update(min_pixels=2048, max_pixels=8192)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(saved))
    assert LLaDA2UniImageProcessor.from_pretrained(tmp_path).size == {"shortest_edge": 2048, "longest_edge": 8192}
    for bad, match in (({"height": 32}, "`size` has keys"), (64, "`size` must be a dict"),
                       ({"shortest_edge": 0}, "`min_pixels`")):
        with pytest.raises(ValueError, match=match):
            LLaDA2UniImageProcessor(size=bad)


def test_channels_first_arrays_and_tensors_give_the_same_patches(processor):
    picture = rgb(40, 72)
    expected = processor(text="Hi", images=picture)["pixel_values"]
    for channels_first in (picture.transpose(2, 0, 1), torch.from_numpy(picture.transpose(2, 0, 1).copy())):
        torch.testing.assert_close(processor(text="Hi", images=channels_first)["pixel_values"], expected,
                                   atol=0, rtol=0)


def test_save_pretrained_leaves_the_processor_as_it_was(processor, tmp_path):
    before = processor.to_dict()
    processor.save_pretrained(tmp_path)
    assert processor.to_dict() == before
    loaded = LLaDA2UniProcessor.from_pretrained(tmp_path)
    loaded_dict = loaded.to_dict()
    loaded.save_pretrained(tmp_path / "again")
    assert loaded.to_dict() == loaded_dict == LLaDA2UniProcessor.from_pretrained(tmp_path / "again").to_dict()
    assert "auto_map" in json.loads((tmp_path / "processor_config.json").read_text())
