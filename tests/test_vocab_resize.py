"""`LLaDA2UniForConditionalGeneration.resize_token_embeddings`: new text ids go below the image codes, which keep
their learned rows (transformers' own resize would cut or shift them)."""

import pytest
import torch

from examples.shapes.factory import ShapesModelSizes, build_model, build_tokenizer
from examples.shapes.world import VOCABULARY

SIZES = ShapesModelSizes(hidden_size=64, layers=2, experts=4, expert_size=32, vision_hidden=32, vision_depth=1)


@pytest.fixture
def model_and_tokenizer():
    tokenizer = build_tokenizer(VOCABULARY)
    return build_model(tokenizer, SIZES, seed=0).eval(), tokenizer


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_grow_keeps_codes_and_logits(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    offset, codebook = model.config.image_token_offset, model.config.codebook_size
    text = tokenizer("a red circle on the left", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([text + [offset + 3, offset + 60, offset + 0]])
    before = _logits(model, ids)
    code_rows = model.get_input_embeddings().weight[offset:].clone()
    added = tokenizer.add_tokens(["same", "first"])
    model.resize_token_embeddings(len(tokenizer) + codebook)
    new_offset = model.config.image_token_offset
    assert new_offset == offset + added == len(tokenizer)
    assert model.config.get_text_config().vocab_size == len(tokenizer) + codebook
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer) + codebook
    torch.testing.assert_close(model.get_input_embeddings().weight[new_offset:], code_rows)
    # The same sequence with its codes at their new ids: every old id's logit is unchanged.
    moved = torch.tensor([text + [new_offset + 3, new_offset + 60, new_offset + 0]])
    after = _logits(model, moved)
    keep = list(range(offset)) + list(range(new_offset, new_offset + codebook))
    torch.testing.assert_close(after[..., keep], before, rtol=1e-5, atol=1e-5)
    # The new words tokenize to the new rows, which start at the mean of the old rows (the matrix's mean is kept).
    same = tokenizer("same", add_special_tokens=False)["input_ids"]
    assert same == [offset]
    weight = model.get_input_embeddings().weight
    old_mean = torch.cat([weight[:offset], weight[new_offset:]]).mean(0)
    torch.testing.assert_close(weight[offset], old_mean)
    torch.testing.assert_close(weight.mean(0), old_mean)


def test_shrink_removes_text_rows_only(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    codebook = model.config.codebook_size
    tokenizer.add_tokens(["same", "first"])
    model.resize_token_embeddings(len(tokenizer) + codebook)
    grown = model.get_input_embeddings().weight.clone()
    model.resize_token_embeddings(len(tokenizer) + codebook - 2)
    offset = model.config.image_token_offset
    assert offset == len(tokenizer) - 2
    torch.testing.assert_close(model.get_input_embeddings().weight[offset:], grown[offset + 2:])


def test_refuses_cutting_special_ids(model_and_tokenizer):
    model, _ = model_and_tokenizer
    codebook = model.config.codebook_size
    with pytest.raises(ValueError, match="special token"):
        model.resize_token_embeddings(codebook + 3)


def test_pad_to_multiple_and_none(model_and_tokenizer):
    model, _ = model_and_tokenizer
    vocab = model.config.get_text_config().vocab_size
    assert model.resize_token_embeddings().weight.shape[0] == vocab
    model.resize_token_embeddings(vocab + 1, pad_to_multiple_of=8)
    assert model.config.get_text_config().vocab_size % 8 == 0
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        model.resize_token_embeddings(vocab, pad_to_multiple_of=0)
