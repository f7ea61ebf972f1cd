"""`LLaDA2GenerationConfig` as the one carrier of sampling settings: defaults that fit the model, explicit requests
beyond the positions refused, transformers' generate vocabulary with its usual meaning, options without a meaning
for diffusion refused by name."""

import json

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation import SuppressTokensLogitsProcessor

from test_generation import EOS, make_model, prompt_ids
from transformers_llada_uni import LLaDA2GenerationConfig, LLaDA2MoeConfig
from transformers_llada_uni.generation_config_llada2_uni import DEFAULTS, IMAGE_FIELDS, defaults_for_model

SHORT = dict(block_length=8, steps=4, threshold=0.5)


@pytest.fixture(scope="module")
def small():
    """A model of 64 positions: the release's 2048-token default does not fit it."""
    return make_model(max_position_embeddings=64)


def test_length_default_is_capped_but_an_explicit_request_is_refused(small):
    ids = prompt_ids(20, seed=3).unsqueeze(0)
    assert small.generation_config.max_new_tokens == 32  # written at init: half the positions
    small.generation_config.max_new_tokens = 2048  # e.g. the release's default in a copied generation_config.json
    try:
        out = small.generate(ids, eos_token_id=None, **SHORT)
        assert out.shape[1] == 64  # the default was capped at the 44 positions left
    finally:
        small.generation_config.max_new_tokens = 32
    for name in ("max_new_tokens", "gen_length"):
        with pytest.raises(ValueError, match=name):
            small.generate(ids, **{name: 45}, **SHORT)
    with pytest.raises(ValueError, match="max_length"):
        small.generate(ids, max_length=65, **SHORT)


def test_max_length_counts_the_prompt(small):
    ids = prompt_ids(20, seed=3).unsqueeze(0)
    out = small.generate(ids, max_length=36, eos_token_id=None, **SHORT)
    assert out.shape[1] == 36
    assert torch.equal(out, small.generate(ids, max_new_tokens=16, eos_token_id=None, **SHORT))


def test_eos_none_means_no_eos(small):
    ids = prompt_ids(20, seed=3).unsqueeze(0)
    free = small.generate(ids, max_new_tokens=40, eos_token_id=None, **SHORT)
    assert free.shape[1] == 60
    stop = int(free[0, 30])  # a token this run produces: as EOS it ends the row early
    assert small.generate(ids, max_new_tokens=40, eos_token_id=stop, **SHORT).shape[1] < 60


def test_do_sample_has_its_transformers_meaning(small):
    ids = prompt_ids(20, seed=4).unsqueeze(0)

    def sample(**kwargs):
        return small.generate(ids, max_new_tokens=16, generator=torch.Generator().manual_seed(0), **SHORT, **kwargs)

    greedy = sample()
    assert torch.equal(sample(do_sample=False, temperature=0.9), greedy)  # do_sample=False is greedy
    assert torch.equal(sample(do_sample=True), sample(temperature=1.0))  # unset temperature samples at 1.0
    assert torch.equal(sample(temperature=0.7), sample(do_sample=True, temperature=0.7))  # the original rule
    assert not torch.equal(sample(do_sample=True), greedy)


def test_num_return_sequences_repeats_each_prompt(small):
    ids = torch.stack([prompt_ids(20, seed=5), prompt_ids(20, seed=6)])
    out = small.generate(ids, do_sample=True, num_return_sequences=3, max_new_tokens=16, eos_token_id=None,
                         generator=torch.Generator().manual_seed(0), **SHORT)
    assert out.shape == (6, 36)
    assert torch.equal(out[:3, :20], ids[:1].expand(3, -1)) and torch.equal(out[3:, :20], ids[1:].expand(3, -1))
    assert len({tuple(row) for row in out[:3, 20:].tolist()}) > 1  # sampled rows differ


def test_logits_processor_bans_a_token(small):
    ids = prompt_ids(20, seed=3).unsqueeze(0)
    plain = small.generate(ids, max_new_tokens=24, eos_token_id=None, **SHORT)
    banned = int(plain[0, 22])
    processors = LogitsProcessorList([SuppressTokensLogitsProcessor([banned], device="cpu")])
    out = small.generate(ids, max_new_tokens=24, eos_token_id=None, logits_processor=processors, **SHORT)
    assert banned not in out[0, 20:].tolist()


class StopAfterTokens(StoppingCriteria):
    def __init__(self, length):
        self.length = length
        self.seen = []

    def __call__(self, input_ids, scores, **kwargs):
        self.seen.append(input_ids.shape[1])
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


def test_stopping_criteria_end_generation_after_a_block(small):
    ids = prompt_ids(20, seed=3).unsqueeze(0)
    full = small.generate(ids, max_new_tokens=40, eos_token_id=None, return_dict_in_generate=True, **SHORT)
    criteria = StopAfterTokens(30)
    out = small.generate(ids, max_new_tokens=40, eos_token_id=None, return_dict_in_generate=True,
                         stopping_criteria=StoppingCriteriaList([criteria]), **SHORT)
    # Blocks end at canvas positions 24 and 32: the criteria see 24 then 32 ids and stop there.
    assert criteria.seen == [24, 32]
    assert out.sequences.shape[1] == 32 and torch.equal(out.sequences, full.sequences[:, :32])
    assert out.num_forward_passes < full.num_forward_passes


@pytest.mark.parametrize("name, value", [("num_beams", 2), ("repetition_penalty", 1.2), ("output_scores", True),
                                         ("penalty_alpha", 0.6)])
def test_options_without_meaning_are_refused_by_name(small, name, value):
    with pytest.raises(ValueError, match=name):
        small.generate(prompt_ids(8, seed=1).unsqueeze(0), **{name: value})
    with pytest.raises(ValueError, match=name):
        small.generate(prompt_ids(8, seed=1).unsqueeze(0), generation_config=GenerationConfig(**{name: value}))


@pytest.mark.parametrize("kwargs, name", [
    (dict(threshold=float("nan")), "threshold"), (dict(temperature=float("inf")), "temperature"),
    (dict(block_length=10_000), "block_length"), (dict(eos_token_id=127), "eos_token_id"),
    (dict(cfg_scale=-1.0), "cfg_scale"), (dict(frobnicate=1), "frobnicate"),
])
def test_bad_settings_name_the_argument(small, kwargs, name):
    with pytest.raises(ValueError, match=name):
        small.generate(prompt_ids(8, seed=1).unsqueeze(0), **kwargs)


@pytest.mark.parametrize("ids, what", [([[1, 2, 3]], "LongTensor"), (torch.ones(1, 2, 3, dtype=torch.long), "shape"),
                                       (torch.ones(1, 3), "integer"), (torch.tensor([[1, 500]]), "vocabulary"),
                                       (torch.tensor([[-1, 2]]), "vocabulary")])
def test_bad_input_ids_are_refused(small, ids, what):
    with pytest.raises(ValueError, match=what):
        small.generate(ids)


def test_save_pretrained_writes_every_default(tmp_path):
    text = make_model()
    text.save_pretrained(tmp_path / "text")
    saved = json.loads((tmp_path / "text" / "generation_config.json").read_text())
    expected = {key for key, value in DEFAULTS.items() if value is not None and key not in IMAGE_FIELDS}
    assert expected <= set(saved) and not set(IMAGE_FIELDS) & set(saved)
    assert (saved["block_length"], saved["mask_token_id"], saved["eos_token_id"]) == (32, 127, EOS)
    loaded = LLaDA2GenerationConfig.from_pretrained(tmp_path / "text")
    assert loaded.max_new_tokens == saved["max_new_tokens"] and loaded.gen_length == loaded.max_new_tokens


def test_uni_defaults_carry_the_image_settings():
    from transformers_llada_uni import LLaDA2UniConfig

    config = LLaDA2UniConfig(text_config=dict(vocab_size=300, max_position_embeddings=256, mask_token_id=299,
                                              eos_token_id=298, pad_token_id=298),
                             vq_config=dict(num_embeddings=64), image_token_offset=200, image_start_token_id=10,
                             image_end_token_id=11, boi_token_id=12)
    values = defaults_for_model(config, image_height=48, pixels_per_token=16).to_diff_dict()
    for key in IMAGE_FIELDS:
        if DEFAULTS[key] is not None:
            assert key in values, key
    assert (values["image_height"], values["image_width"], values["pixels_per_token"]) == (48, 1024, 16)
    assert values["max_new_tokens"] == 128 and values["thinking_max_new_tokens"] == 128  # half of 256 positions


def test_sprint_config_is_stored_as_a_dict(tmp_path):
    from transformers_llada_uni.sprint_llada2_uni import SprintConfig

    config = LLaDA2GenerationConfig(sprint=SprintConfig(keep_ratio=0.25), cfg_scale=3.0, gen_length=12)
    assert (config.guidance_scale, config.max_new_tokens) == (3.0, 12)
    config.save_pretrained(tmp_path)
    loaded = LLaDA2GenerationConfig.from_pretrained(tmp_path)
    assert loaded.sprint["keep_ratio"] == 0.25 and loaded.guidance_scale == 3.0


def test_text_only_config_has_no_image_fields():
    config = LLaDA2MoeConfig(vocab_size=64, mask_token_id=63, eos_token_id=62, pad_token_id=62)
    assert not set(IMAGE_FIELDS) & set(defaults_for_model(config).to_diff_dict())
