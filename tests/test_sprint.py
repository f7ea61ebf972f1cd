"""SPRINT (`sprint_llada2_uni.py`): where it coincides with the exact loop, that pruning really drops keys and keeps
RoPE positions, adaptive unmasking counts, per-modality budgets, the editing-CFG fallback, and argument checks."""

import ast
import inspect
import logging
import math

import pytest
import torch

from conftest import randomize_expert_bias, tiny_config_kwargs
from transformers_llada_uni import (
    BlockDiffusionCache,
    LLaDA2GenerationConfig,
    LLaDA2MoeConfig,
    LLaDA2MoeForCausalLM,
    LLaDA2UniConfig,
    LLaDA2UniForConditionalGeneration,
)
from transformers_llada_uni.sprint_llada2_uni import (
    PrunedPrefixCache,
    SprintConfig,
    adaptive_quota,
    adaptive_transfers,
    select_prefix,
    sprint_from_original,
    strategy_scores,
    structural_token_ids,
)

MASK, PAD = 127, 126
BLOCK = 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    config = LLaDA2MoeConfig(**tiny_config_kwargs(initializer_range=0.1, eos_token_id=PAD, pad_token_id=PAD,
                                                  mask_token_id=MASK, block_length=BLOCK))
    model = LLaDA2MoeForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 7.0 / config.hidden_size**0.5)
        model.lm_head.weight[[PAD, MASK]] = 0.0  # never EOS: every run generates gen_length tokens
    return randomize_expert_bias(model)


def prompt(length, seed):
    return torch.randint(0, 120, (length,), generator=torch.Generator().manual_seed(seed))


def generate(model, ids, attention_mask=None, **kwargs):
    settings = dict(gen_length=24, block_length=BLOCK, steps=BLOCK, threshold=0.9, return_dict_in_generate=True)
    settings.update(kwargs)
    return model.generate(ids, attention_mask=attention_mask, **settings)


class KeyCounter:
    """Records (first position, query length, key length) of every forward."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append((int(kwargs["position_ids"][0, 0]), kwargs["input_ids"].shape[1],
                           kwargs["attention_mask"].shape[-1]))

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize("length,threshold", [(5, 0.9), (21, 0.9), (21, 0.6), (40, 0.99)])
def test_keep_all_low_confidence_matches_exact(model, length, threshold):
    """keep_ratio 1 + low_confidence with steps == block_length makes the exact loop's decisions."""
    ids = prompt(length, length).unsqueeze(0)
    exact = generate(model, ids, threshold=threshold)
    sprint = generate(model, ids, threshold=threshold, sprint={"keep_ratio": 1.0, "strategy": "low_confidence"})
    assert torch.equal(exact.sequences, sprint.sequences)
    assert exact.num_forward_passes == sprint.num_forward_passes


def test_keep_all_matches_exact_on_a_padded_batch(model):
    first, second = prompt(9, 1), prompt(19, 2)
    ids = torch.full((2, 19), PAD)
    mask = torch.zeros((2, 19), dtype=torch.long)
    ids[0, 10:], mask[0, 10:] = first, 1
    ids[1], mask[1] = second, 1
    exact = generate(model, ids, mask)
    sprint = generate(model, ids, mask, sprint={"keep_ratio": 1.0})
    assert torch.equal(exact.sequences, sprint.sequences)


def test_pruning_drops_keys_within_budget(model):
    length = 37
    ids = prompt(length, 3).unsqueeze(0)
    counter = KeyCounter(model)
    try:
        out = generate(model, ids, gen_length=40, sprint={"keep_ratio": 0.5}, output_history=True)
    finally:
        counter.remove()
    generated = out.sequences[0, length:]
    assert len(generated) == 40 and not (generated == MASK).any() and (generated < 128).all()
    pruned = [(start, keys - BLOCK) for start, queries, keys in counter.calls
              if queries == BLOCK and keys < start + BLOCK]
    assert pruned, "no step ran against a pruned prefix"
    for start, kept in pruned:
        protected = min(start, BLOCK) + (1 if start > BLOCK else 0)  # the last finished block and the first token
        assert kept == protected + math.ceil(0.5 * (start - protected)) < start
    # Warm-up steps (the first of every block, which also re-runs the finished block) still see the whole prefix.
    warmups = [(start, queries, keys) for start, queries, keys in counter.calls if queries > BLOCK]
    assert len(warmups) == 6 and all(keys == start + queries for start, queries, keys in warmups)


def test_cache_warmup_steps_delays_pruning(model):
    ids = prompt(32, 4).unsqueeze(0)  # block-aligned: three blocks of 8 masks
    counts = {}
    for warmup in (1, 3):
        counter = KeyCounter(model)
        try:
            generate(model, ids, threshold=1.0, steps=4, sprint={"keep_ratio": 0.5, "cache_warmup_steps": warmup})
        finally:
            counter.remove()
        counts[warmup] = sum(keys < start + queries for start, queries, keys in counter.calls)
    # 4 steps per block (threshold 1 accepts nothing extra): 3 pruned steps per block, then 1.
    assert counts[1] == 3 * counts[3] and counts[3] > 0


def test_pruned_cache_keeps_rotary_positions(model):
    """Block logits against a pruned prefix cache equal a full forward that hides the dropped keys from the block."""
    total, start = 24, 16
    ids = prompt(total, 5).unsqueeze(0)
    positions = torch.arange(total).unsqueeze(0)
    block = torch.arange(total) // BLOCK
    allowed = (block.unsqueeze(1) >= block.unsqueeze(0))[None, None]
    kept = torch.tensor([[0, 2, 3, 7, 9, 10, 14, 15]])
    cache = BlockDiffusionCache(total)
    with torch.no_grad():
        model(input_ids=ids[:, :start], attention_mask=allowed[:, :, :start, :start], position_ids=positions[:, :start],
              past_key_values=cache)
        view = PrunedPrefixCache(cache, kept, BLOCK)
        mask = torch.cat([torch.ones(1, 1, BLOCK, kept.shape[1], dtype=torch.bool),
                          allowed[:, :, start:, start:]], dim=-1)
        pruned = model(input_ids=ids[:, start:], attention_mask=mask, position_ids=positions[:, start:],
                       past_key_values=view).logits
        hidden = allowed.clone()
        dropped = torch.ones(start, dtype=torch.bool)
        dropped[kept[0]] = False
        hidden[:, :, start:, :start] &= ~dropped
        full = model(input_ids=ids, attention_mask=hidden, position_ids=positions).logits[:, start:]
    torch.testing.assert_close(pruned, full, rtol=1e-4, atol=1e-4)


def test_adaptive_unmasking_commits_ceil_remaining_over_steps_left(model):
    """With nothing above the threshold each step commits exactly ceil(masked / steps_left)."""
    ids = prompt(16, 6).unsqueeze(0)
    steps = 3
    out = generate(model, ids, steps=steps, output_history=True, sprint={"keep_ratio": 0.5, "threshold": 1.0})
    assert out.num_forward_passes == 3 * steps  # prompt of 2 blocks, then three blocks of 8 in 3 steps each
    previous = torch.full((24,), MASK)
    for index, current in enumerate(out.history):
        block, step = divmod(index, steps)
        region = slice(block * BLOCK, (block + 1) * BLOCK)
        remaining = int((previous[region] == MASK).sum())
        committed = remaining - int((current[0, region] == MASK).sum())
        assert committed == math.ceil(remaining / (steps - step))
        previous = current[0]
    assert not (previous == MASK).any()


def test_adaptive_quota_and_threshold_union():
    active = torch.tensor([[True] * 6 + [False] * 2, [True, False] * 4])
    assert adaptive_quota(active, step=0, steps=4).tolist() == [2, 1]
    assert adaptive_quota(active, step=3, steps=4).tolist() == [6, 4]  # the last step takes what is left
    assert adaptive_quota(active, step=9, steps=4).tolist() == [6, 4]  # never divides by zero
    confidence = torch.tensor([[0.1, 0.99, 0.98, 0.2, 0.3, 0.4, 0.999, 0.999],
                               [0.5, 0.9, 0.6, 0.9, 0.7, 0.9, 0.1, 0.9]])
    commit = adaptive_transfers(confidence, confidence, active, torch.tensor([1, 3]), threshold=0.95)
    assert commit[0].nonzero().flatten().tolist() == [1, 2]  # top-1 plus the other one above 0.95; masked-out skipped
    assert commit[1].nonzero().flatten().tolist() == [0, 2, 4]


def test_strategies_rank_differently():
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.45, 0.2, 0.2, 0.15], [0.4, 0.1, 0.1, 0.4]]]) + 1e-9)
    confidence = logits.softmax(-1).max(-1).values
    assert strategy_scores(logits, confidence, "low_confidence").argmax().item() == 0
    assert strategy_scores(logits, confidence, "top_k_margin").argmax().item() == 1
    assert strategy_scores(logits, confidence, "neg_entropy").argmax().item() == 0  # two-way split: lowest entropy


@pytest.mark.parametrize("strategy", ["top_k_margin", "neg_entropy"])
def test_other_strategies_generate_valid_tokens(model, strategy):
    ids = prompt(21, 7).unsqueeze(0)
    out = generate(model, ids, steps=4, sprint={"keep_ratio": 0.5, "strategy": strategy})
    generated = out.sequences[0, 21:]
    assert len(generated) == 24 and not (generated == MASK).any()
    blocks = -(-(21 + 24) // BLOCK) - 21 // BLOCK  # blocks holding generated positions: 4
    assert out.num_forward_passes <= blocks * 4  # adaptive unmasking finishes every block within its steps


def test_select_prefix_per_modality_budgets():
    tokens = torch.tensor([[1, 50, 51, 2, 52, 53, 3, 4, 54, 5, 6, 7]])  # ids >= 50 are image codes
    valid = torch.ones_like(tokens, dtype=torch.bool)
    importance = torch.linspace(1.0, 0.1, tokens.shape[1]).unsqueeze(0)
    confidence = torch.ones(tokens.shape)
    settings = SprintConfig(keep_ratio=0.5, image_keep_ratio=1.0, confidence_alpha=0.0)
    keep = select_prefix(importance, confidence, tokens, valid, settings, block_length=2, image_range=(50, 60))
    is_image = tokens >= 50
    assert keep[is_image].all()  # image_keep_ratio 1 keeps every image code
    assert keep[0, 0] and keep[0, -2:].all()  # first token and the last block are protected
    # 7 text tokens, 3 of them protected (first, and the last block's two): the other 4 keep ceil(0.5 * 4) = 2, the
    # two most important ones (importance falls along the row: positions 3 and 6)
    text_kept = (keep & ~is_image)[0].nonzero().flatten().tolist()
    assert text_kept == [0, 3, 6, 10, 11]
    settings = SprintConfig(keep_ratio=0.5, text_keep_ratio=1.0)
    keep = select_prefix(importance, confidence, tokens, valid, settings, block_length=2, image_range=(50, 60))
    # 5 image codes, none protected: ceil(0.5 * 5) = 3, the first three by importance
    assert keep[~is_image].all() and (keep & is_image)[0].nonzero().flatten().tolist() == [1, 2, 4]


def test_select_prefix_protected_positions_do_not_use_the_budget():
    """A short prompt: with the protected positions counted in the budget, nothing else would be kept."""
    tokens = torch.arange(10).unsqueeze(0)  # all text
    valid = torch.ones_like(tokens, dtype=torch.bool)
    importance = torch.tensor([[0.1, 0.2, 0.9, 0.3, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1]])
    settings = SprintConfig(keep_ratio=0.5, confidence_alpha=0.0)
    keep = select_prefix(importance, torch.ones(tokens.shape), tokens, valid, settings, block_length=4)
    # protected: position 0 and the last 4 (6-9); of the other 5, ceil(2.5) = 3 by importance: 2, 4, 3
    assert keep[0].nonzero().flatten().tolist() == [0, 2, 3, 4, 6, 7, 8, 9]


def test_select_prefix_keeps_protected_ids_on_top_of_the_budget():
    tokens = torch.tensor([[5, 9, 9, 30, 31, 32, 33, 9, 34, 35, 36, 37]])  # 9 is a structural id
    valid = torch.ones_like(tokens, dtype=torch.bool)
    importance = torch.tensor([[0.1, 0.0, 0.0, 0.9, 0.8, 0.7, 0.6, 0.0, 0.5, 0.1, 0.1, 0.1]])
    settings = SprintConfig(keep_ratio=0.5, confidence_alpha=0.0)
    plain = select_prefix(importance, torch.ones(tokens.shape), tokens, valid, settings, block_length=3)
    keep = select_prefix(importance, torch.ones(tokens.shape), tokens, valid, settings, block_length=3,
                         protected_ids=torch.tensor([9]))
    # Without protection the 9s score lowest and go; the 8 unprotected positions keep ceil(4) = 4: 3, 4, 5, 6.
    assert plain[0].nonzero().flatten().tolist() == [0, 3, 4, 5, 6, 9, 10, 11]
    # With it the three 9s stay, and the other 5 positions (3-6, 8) keep ceil(2.5) = 3 by importance.
    assert keep[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 7, 9, 10, 11]


def test_structural_token_ids_come_from_the_config(uni, model):
    config = uni.config
    assert structural_token_ids(config) == sorted({93, 88, 91, 89})  # bos, image start / end, boi
    widened = LLaDA2UniConfig(**{**config.to_dict(), "reserved_token_start_id": 60, "num_reserved_tokens": 3,
                                 "uncondition_token_id": 70, "structural_token_ids": [80, 81]})
    assert structural_token_ids(widened) == [60, 61, 62, 70, 80, 81, 88, 89, 91, 93]
    assert structural_token_ids(model.config) == [model.config.bos_token_id]  # text-only: bos alone
    with pytest.raises(ValueError, match="structural_token_ids"):
        LLaDA2UniConfig(**{**config.to_dict(), "structural_token_ids": [TEXT_VOCAB + 1]})  # an image id


@pytest.mark.parametrize("settings,expected", [
    ({"keep_ratio": 0.25}, [88, 89, 91, 93]),
    ({"keep_ratio": 0.25, "protect_structure": False}, []),
    ({"keep_ratio": 0.25, "protect_structure": False, "protected_token_ids": [7]}, [7]),
    ({"keep_ratio": 0.25, "protected_token_ids": [7, 88]}, [7, 88, 89, 91, 93]),
])
def test_generation_passes_the_protected_ids_to_pruning(uni, monkeypatch, settings, expected):
    import transformers_llada_uni.sprint_llada2_uni as sprint_module

    seen = []
    original = sprint_module.select_prefix

    def recording(*args, **kwargs):
        seen.append(args[7].tolist())
        return original(*args, **kwargs)

    monkeypatch.setattr(sprint_module, "select_prefix", recording)
    cond, _, _ = image_prompts()
    prompt_ids = torch.cat([cond, torch.tensor([[88, 5, 5, 89]])], dim=1)
    uni.generate_image_tokens(prompt_ids, height=4, width=6, steps=4, block_length=BLOCK, sprint=settings)
    assert seen and all(ids == expected for ids in seen)


@pytest.mark.parametrize(
    "sprint,name",
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"image_keep_ratio": -1}, "image_keep_ratio"),
        ({"text_keep_ratio": "all"}, "text_keep_ratio"),
        ({"confidence_alpha": 2.0}, "confidence_alpha"),
        ({"cache_warmup_steps": 0}, "cache_warmup_steps"),
        ({"strategy": "random"}, "strategy"),
        ({"threshold": 0.0}, "threshold"),
        ({"protect_structure": "yes"}, "protect_structure"),
        ({"protected_token_ids": "12"}, "protected_token_ids"),
        ({"protected_token_ids": [3, -1]}, "protected_token_ids"),
        ({"keep": 0.5}, "unknown settings"),
        ("yes", "sprint"),
    ],
)
def test_bad_sprint_arguments_raise_before_any_forward(model, sprint, name):
    counter = KeyCounter(model)
    try:
        with pytest.raises(ValueError, match=name):
            generate(model, prompt(8, 0).unsqueeze(0), sprint=sprint)
    finally:
        counter.remove()
    assert counter.calls == []


def test_sprint_needs_the_block_cache(model):
    with pytest.raises(ValueError, match="use_block_cache"):
        generate(model, prompt(8, 0).unsqueeze(0), sprint=True, use_block_cache=False)


def test_original_keywords_and_config_round_trip(tmp_path):
    assert sprint_from_original(use_sprint=True, keep_ratio=0.3, remasking="neg_entropy") == {
        "keep_ratio": 0.3, "remasking": "neg_entropy"}
    assert sprint_from_original(use_sprint=True) is True and sprint_from_original() is None
    with pytest.raises(ValueError, match="use_sprint"):
        sprint_from_original(keep_ratio=0.3)
    with pytest.raises(ValueError, match="either"):
        sprint_from_original(use_sprint=True, sprint={"keep_ratio": 0.3}, keep_ratio=0.3)
    with pytest.raises(ValueError, match="remasking|strategy"):
        sprint_from_original(use_sprint=True, remasking="fastest")
    config = LLaDA2GenerationConfig(sprint=SprintConfig(keep_ratio=0.3, strategy="top_k_margin"))
    config.save_pretrained(tmp_path)
    loaded = LLaDA2GenerationConfig.from_pretrained(tmp_path)
    assert SprintConfig.from_setting(loaded.sprint) == SprintConfig(keep_ratio=0.3, strategy="top_k_margin")


# ---------------------------------------------------------------------------------------------- image tokens and CFG

TEXT_VOCAB, CODEBOOK = 96, 32


@pytest.fixture(scope="module")
def uni():
    torch.manual_seed(4)
    text = tiny_config_kwargs(vocab_size=TEXT_VOCAB + CODEBOOK, mask_token_id=90, eos_token_id=92, pad_token_id=92,
                              bos_token_id=93, initializer_range=0.1)
    config = LLaDA2UniConfig(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_heads=2, depth=1, patch_size=16, image_size=64),
        vq_config=dict(num_embeddings=CODEBOOK, embed_dim=16, latent_channels=32),
        image_start_token_id=88, image_end_token_id=91, boi_token_id=89,
    )
    model = LLaDA2UniForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    return model


def image_prompts():
    cond = torch.randint(0, 80, (1, 13), generator=torch.Generator().manual_seed(0))
    uncond = torch.randint(0, 80, (1, 7), generator=torch.Generator().manual_seed(1))
    no_image = torch.randint(0, 80, (1, 5), generator=torch.Generator().manual_seed(2))
    return cond, uncond, no_image


def test_three_way_editing_cfg_falls_back_to_exact(uni):
    cond, uncond, no_image = image_prompts()
    common = dict(height=4, width=6, uncond_input_ids=uncond, uncond_image_input_ids=no_image, cfg_scale=3.0,
                  cfg_image_scale=1.5, steps=4, block_length=BLOCK)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("transformers_llada_uni.generation_modes_llada2_uni")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        exact = uni.generate_image_tokens(cond, **common)
        sprint = uni.generate_image_tokens(cond, **common, sprint={"keep_ratio": 0.25})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert torch.equal(exact["token_ids"], sprint["token_ids"])
    assert exact["num_forward_passes"] == sprint["num_forward_passes"]
    assert any("three-way" in message for message in messages)


def test_simple_cfg_with_sprint(uni):
    cond, uncond, _ = image_prompts()
    common = dict(height=4, width=6, uncond_input_ids=uncond, cfg_scale=3.0, steps=BLOCK, block_length=BLOCK)
    exact = uni.generate_image_tokens(cond, **common)
    same = uni.generate_image_tokens(cond, **common, sprint={"keep_ratio": 1.0})
    assert torch.equal(exact["token_ids"], same["token_ids"])
    pruned = uni.generate_image_tokens(cond, **common, sprint={"keep_ratio": 0.5, "image_keep_ratio": 0.25})
    codes = pruned["token_ids"]
    assert codes.shape == (1, 24) and ((codes >= 0) & (codes < CODEBOOK)).all()


def test_sprint_imports_nothing_from_modeling():
    # modeling imports generation, which imports this module: an import of modeling here would close a cycle.
    from transformers_llada_uni import sprint_llada2_uni

    tree = ast.parse(inspect.getsource(sprint_llada2_uni))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if "modeling" in name]
