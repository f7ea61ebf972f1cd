"""Block-diffusion `generate()`: cache exactness, batching, an independent reference loop, outputs, sampling, errors.

Every model here is tiny and random (built from `tiny_config_kwargs`). The LM head is re-drawn with a large gain so
that confidences cross the thresholds and blocks finish in fewer steps than the quota schedule, and the EOS id is set
to a token that the model actually produces mid-generation, so EOS stops and `eos_early_stop` really happen.
"""

import math

import pytest
import torch
from transformers import DynamicCache

from conftest import randomize_expert_bias, tiny_config_kwargs
from transformers_llada_uni import (
    BlockDiffusionCache,
    LLaDA2GenerateOutput,
    LLaDA2GenerationConfig,
    LLaDA2MoeConfig,
    LLaDA2MoeForCausalLM,
)

MASK = 127
PAD = 126
# A token the seed-1 model below produces in the middle of some generations: used as EOS so that EOS stops happen.
EOS = 68
PROMPT_VOCAB = 120  # prompts use ids below the special ones


def make_model(seed=1, lm_gain=7.0, **overrides):
    torch.manual_seed(seed)
    kwargs = tiny_config_kwargs(initializer_range=0.1, eos_token_id=EOS, pad_token_id=PAD, mask_token_id=MASK)
    kwargs.update(overrides)
    model = LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**kwargs)).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, lm_gain / model.config.hidden_size**0.5)
    return randomize_expert_bias(model)


@pytest.fixture(scope="module")
def model():
    return make_model()


def prompt_ids(length, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, PROMPT_VOCAB, (length,), generator=gen)
    return ids.masked_fill(ids == EOS, EOS - 1)  # no EOS inside prompts unless a test puts one there


def left_pad(prompts, pad=PAD):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    return ids, mask


def generated_rows(sequences, prompt_width):
    """Generated ids of each row with the trailing `pad` (after EOS, or past a shorter row) removed."""
    rows = []
    for row in sequences[:, prompt_width:].tolist():
        if EOS in row:
            row = row[: row.index(EOS) + 1]
        rows.append(row)
    return rows


class ForwardCounter:
    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.count += 1

    def remove(self):
        self.handle.remove()


# --------------------------------------------------------------------------------------------------------------------
# An independent reference: the original LLaDA2.0 `generate()` (original-system.md §6.1, parity README §5), batch 1,
# written from the spec: the whole prefix runs on every step, no cache, greedy.
# Two deliberate differences from the original's literal code, both documented in docs/generation.md: the output is
# the prompt + at most `gen_length` generated ids (the original's early return could include canvas positions past
# gen_length), and EOS is looked up in the generated region only (the original also searched the prompt).
# --------------------------------------------------------------------------------------------------------------------


def reference_generate(model, prompt, *, gen_length, block_length, steps, threshold, eos_id, mask_id,
                       eos_early_stop=False, minimal_topk=1):
    prompt = prompt.reshape(-1)
    P, L, G = prompt.shape[0], block_length, gen_length
    steps = min(steps, G // minimal_topk)
    num_blocks = math.ceil((P + G) / L)
    T = num_blocks * L
    x = torch.full((T,), mask_id, dtype=torch.long)
    x[:P] = prompt
    block_of = torch.arange(T) // L
    allowed = (block_of[:, None] >= block_of[None, :])[None, None]  # [1, 1, T, T] bool, True = may attend
    positions = torch.arange(T)[None]
    quota = [L // steps + (1 if s < L % steps else 0) for s in range(steps)]
    forwards = 0

    def result():
        gen = x[P : P + G]
        hits = (gen == eos_id).nonzero()
        if len(hits):
            gen = gen[: int(hits[0]) + 1]
        return torch.cat([prompt, gen]).tolist(), forwards

    with torch.no_grad():
        for block in range(P // L, num_blocks):
            end = (block + 1) * L
            for step in range(steps):
                active = x[end - L : end] == mask_id
                if not active.any():
                    break
                logits = model(
                    input_ids=x[None, :end], attention_mask=allowed[..., :end, :end], position_ids=positions[:, :end]
                ).logits[0, -L:]
                forwards += 1
                confidence, tokens = logits.float().softmax(dim=-1).max(dim=-1)
                confidence = torch.where(active, confidence, torch.tensor(float("-inf")))
                high = confidence > threshold
                if int(high.sum()) >= quota[step]:
                    commit = high
                else:
                    k = min(quota[step], int(active.sum()))
                    commit = torch.zeros(L, dtype=torch.bool)
                    commit[confidence.argsort(descending=True, stable=True)[:k]] = True
                x[end - L : end] = torch.where(commit, tokens, x[end - L : end])
                # The original checks for an early stop only on a step that commits an EOS.
                if eos_early_stop and (tokens[commit] == eos_id).any():
                    eos_pos = P + int((x[P:] == eos_id).nonzero()[0])
                    if not (x[P:eos_pos] == mask_id).any():
                        return result()
            if (x[P:end] == eos_id).any():
                break
    return result()


def run(model, ids, **kwargs):
    kwargs.setdefault("return_dict_in_generate", True)
    return model.generate(ids, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Cache exactness on a grid
# --------------------------------------------------------------------------------------------------------------------

# (prompt lengths (one per row), gen_length, threshold, steps, block_length)
GRID = [
    ((1,), 1, 0.9, 32, 32),
    ((5,), 17, 0.5, 4, 32),
    ((31,), 32, 0.9, 32, 32),
    ((32,), 64, 1.0, 4, 32),
    ((33,), 64, 0.5, 40, 32),
    ((70,), 17, 1.0, 32, 32),
    ((12,), 64, 0.9, 8, 32),
    ((5,), 64, 0.9, 4, 4),
    ((33,), 17, 0.5, 1, 8),
    ((31,), 64, 1.0, 8, 8),
    ((70,), 32, 0.9, 40, 8),
    ((1,), 64, 1.0, 1, 32),
    ((32,), 17, 0.9, 4, 4),
    ((5, 31, 33), 64, 0.9, 4, 32),
    ((1, 32, 70), 17, 1.0, 32, 8),
    ((33, 12, 33), 32, 0.5, 40, 32),
    ((31, 32, 5), 64, 0.9, 8, 4),
    ((70, 1, 5), 1, 0.9, 1, 32),
]


def _grid_id(case):
    lengths, gen, thr, steps, block = case
    return f"P{'-'.join(map(str, lengths))}_G{gen}_thr{thr}_s{steps}_L{block}"


@pytest.mark.parametrize("case", GRID, ids=[_grid_id(c) for c in GRID])
def test_block_cache_is_exact(model, case):
    lengths, gen_length, threshold, steps, block_length = case
    prompts = [prompt_ids(n, seed=100 * i + n) for i, n in enumerate(lengths)]
    ids, mask = left_pad(prompts)
    settings = dict(gen_length=gen_length, threshold=threshold, steps=steps, block_length=block_length)
    results = {}
    for early in (False, True):
        for cache in (True, False):
            out = run(model, ids, attention_mask=mask, use_block_cache=cache, eos_early_stop=early, **settings)
            results[early, cache] = out
        assert torch.equal(results[early, True].sequences, results[early, False].sequences)
        assert results[early, True].num_forward_passes == results[early, False].num_forward_passes
    # An early stop saves forwards but never changes a token: everything up to a settled EOS is already final.
    assert torch.equal(results[True, True].sequences, results[False, True].sequences)
    assert results[True, True].num_forward_passes <= results[False, True].num_forward_passes
    # Structural checks: the prompt is returned as given; at most gen_length ids; nothing is left masked.
    sequences = results[False, True].sequences
    assert torch.equal(sequences[:, : ids.shape[1]], ids)
    assert 1 <= sequences.shape[1] - ids.shape[1] <= gen_length
    assert not (sequences[:, ids.shape[1] :] == MASK).any()
    passes = results[False, True].num_forward_passes
    blocks = max(math.ceil((n + gen_length) / block_length) - n // block_length for n in lengths)
    assert 1 <= passes <= blocks * min(steps, gen_length)


# Prompts (seed = length) that reach an EOS settling mid-block with the seed-1 model; the first three are grid cases.
# Early stop saves forwards on these under both the original's rule and generate()'s (see test_matches_reference_loop).
EARLY_STOP_CASES = [((31,), 32, 0.9, 32, 32), ((32,), 64, 1.0, 4, 32), ((32,), 17, 0.9, 4, 4), ((1,), 40, 0.9, 8, 8)]


@pytest.mark.parametrize("case", EARLY_STOP_CASES, ids=[_grid_id(c) for c in EARLY_STOP_CASES])
def test_eos_early_stop_triggers(model, case):
    lengths, gen_length, threshold, steps, block_length = case
    ids = prompt_ids(lengths[0], seed=lengths[0]).unsqueeze(0)
    settings = dict(gen_length=gen_length, threshold=threshold, steps=steps, block_length=block_length)
    late = run(model, ids, eos_early_stop=False, **settings)
    early = {cache: run(model, ids, eos_early_stop=True, use_block_cache=cache, **settings) for cache in (True, False)}
    generated = late.sequences[0, ids.shape[1] :].tolist()
    assert generated[-1] == EOS and EOS not in generated[:-1] and len(generated) < gen_length
    assert early[True].num_forward_passes < late.num_forward_passes
    for out in early.values():
        assert torch.equal(out.sequences, late.sequences)
        assert out.num_forward_passes == early[True].num_forward_passes


def test_eos_stops_generation_after_the_block(model):
    # Without early stop, the block holding EOS is finished and no later block runs.
    ids = prompt_ids(5, seed=5).unsqueeze(0)
    settings = dict(gen_length=64, threshold=0.9, steps=4, block_length=4)
    out = run(model, ids, **settings)
    generated = out.sequences[0, 5:].tolist()
    assert generated[-1] == EOS and len(generated) < 64
    eos_block = (5 + len(generated) - 1) // 4
    assert out.num_forward_passes <= 4 * (eos_block - 5 // 4 + 1)
    # The same run with an EOS id the model never produces goes on to gen_length.
    longer = run(model, ids, eos_token_id=PROMPT_VOCAB + 5, **settings)
    assert longer.sequences.shape[1] == 5 + 64
    assert longer.sequences[0, : out.sequences.shape[1] - 1].tolist() == out.sequences[0, :-1].tolist()
    assert longer.num_forward_passes > out.num_forward_passes


# --------------------------------------------------------------------------------------------------------------------
# Batches with left padding = each prompt alone
# --------------------------------------------------------------------------------------------------------------------

BATCHES = [
    ((5, 31, 33), 64, 0.9, 4, 32, False),
    ((1, 32, 70), 17, 1.0, 32, 8, True),
    ((12, 5, 40), 64, 0.9, 8, 32, True),
    ((31, 32, 5), 64, 0.9, 8, 4, False),
]


@pytest.mark.parametrize("case", BATCHES, ids=[_grid_id(c[:5]) + f"_early{c[5]}" for c in BATCHES])
def test_left_padded_batch_matches_single_prompts(model, case):
    lengths, gen_length, threshold, steps, block_length, early = case
    prompts = [prompt_ids(n, seed=n) for n in lengths]
    settings = dict(gen_length=gen_length, threshold=threshold, steps=steps, block_length=block_length,
                    eos_early_stop=early)
    ids, mask = left_pad(prompts, pad=MASK)  # the padding id must not matter
    batch = run(model, ids, attention_mask=mask, **settings).sequences
    alone = [run(model, p.unsqueeze(0), **settings).sequences[0, len(p) :].tolist() for p in prompts]
    assert generated_rows(batch, ids.shape[1]) == alone
    # Rows shorter than the longest output are filled with pad_token_id.
    for row, expected in enumerate(alone):
        assert (batch[row, ids.shape[1] + len(expected) :] == PAD).all()
    # A 2-D attention_mask of ones is the same as none.
    same = run(model, prompts[0].unsqueeze(0), attention_mask=torch.ones(1, len(prompts[0])), **settings)
    assert same.sequences[0, len(prompts[0]) :].tolist() == alone[0]


def test_batch_with_a_row_that_stops_early(model):
    # Row 0 hits EOS in its first block; the other rows keep going and are unaffected.
    prompts = [prompt_ids(70, seed=70), prompt_ids(5, seed=5), prompt_ids(33, seed=33)]
    ids, mask = left_pad(prompts)
    settings = dict(gen_length=17, threshold=0.5, steps=4, block_length=32)
    batch = run(model, ids, attention_mask=mask, **settings).sequences
    rows = generated_rows(batch, ids.shape[1])
    assert rows[0][-1] == EOS and len(rows[0]) < 17
    assert [len(r) for r in rows[1:]] == [17, 17]
    assert (batch[0, ids.shape[1] + len(rows[0]) :] == PAD).all()
    for p, row in zip(prompts, rows):
        assert run(model, p.unsqueeze(0), **settings).sequences[0, len(p) :].tolist() == row


# --------------------------------------------------------------------------------------------------------------------
# Agreement with the reference loop (ids and forward counts)
# --------------------------------------------------------------------------------------------------------------------

# (seed of the model, prompt length, gen_length, threshold, steps, block_length, eos_early_stop)
REFERENCE_CASES = [
    (1, 33, 64, 0.95, 8, 32, False),
    (1, 33, 64, 1.0, 8, 32, False),
    (1, 31, 64, 0.9, 8, 32, True),  # early stop
    (1, 1, 40, 0.9, 8, 8, True),  # early stop
    (1, 32, 64, 0.9, 4, 4, True),  # early stop
    (1, 70, 17, 0.5, 4, 32, False),  # EOS first
    (1, 31, 40, 0.9, 40, 8, False),
    (2, 45, 64, 0.95, 32, 32, False),
    (2, 1, 30, 0.8, 5, 16, True),
    (3, 32, 33, 0.9, 6, 32, False),
]
# With eos_early_stop the original only looks for a settled EOS on a step that commits an EOS; stopping whenever the
# first EOS is settled would end these earlier (10 vs 13 and 5 vs 10 forwards, same ids).
EARLY_STOP_COUNT_CASES = [(1, 12, 64, 0.9, 8, 32, True), (1, 70, 64, 0.9, 8, 32, True)]


def _reference_case_id(case):
    seed, P, G, thr, steps, L, early = case
    return f"seed{seed}_P{P}_G{G}_thr{thr}_s{steps}_L{L}" + ("_early" if early else "")


@pytest.fixture(scope="module")
def models_by_seed(model):
    return {1: model, 2: make_model(seed=2), 3: make_model(seed=3, lm_gain=9.0)}


@pytest.mark.parametrize(
    "case",
    REFERENCE_CASES + EARLY_STOP_COUNT_CASES,
    ids=[_reference_case_id(c) for c in REFERENCE_CASES + EARLY_STOP_COUNT_CASES],
)
def test_matches_reference_loop(models_by_seed, case):
    seed, P, G, threshold, steps, L, early = case
    model = models_by_seed[seed]
    prompt = prompt_ids(P, seed=P)
    settings = dict(gen_length=G, threshold=threshold, steps=steps, block_length=L, eos_early_stop=early)
    expected_ids, expected_forwards = reference_generate(model, prompt, eos_id=EOS, mask_id=MASK, **settings)
    for cache in (False, True):
        out = run(model, prompt.unsqueeze(0), use_block_cache=cache, **settings)
        assert out.sequences[0].tolist() == expected_ids
        assert out.num_forward_passes == expected_forwards


@pytest.mark.parametrize("case", EARLY_STOP_COUNT_CASES, ids=[_reference_case_id(c) for c in EARLY_STOP_COUNT_CASES])
def test_eos_early_stop_ids_match_reference(model, case):
    seed, P, G, threshold, steps, L, early = case
    prompt = prompt_ids(P, seed=P)
    settings = dict(gen_length=G, threshold=threshold, steps=steps, block_length=L, eos_early_stop=early)
    expected_ids, expected_forwards = reference_generate(model, prompt, eos_id=EOS, mask_id=MASK, **settings)
    out = run(model, prompt.unsqueeze(0), use_block_cache=False, **settings)
    assert out.sequences[0].tolist() == expected_ids
    assert out.num_forward_passes <= expected_forwards


def test_forward_count_is_number_of_model_calls(model):
    ids = prompt_ids(33, seed=33).unsqueeze(0)
    for cache in (True, False):
        counter = ForwardCounter(model)
        try:
            out = run(model, ids, gen_length=40, threshold=0.9, steps=8, use_block_cache=cache)
        finally:
            counter.remove()
        assert counter.count == out.num_forward_passes


def test_prompt_eos_does_not_stop(model):
    prompt = prompt_ids(20, seed=20)
    prompt[3] = EOS
    settings = dict(gen_length=30, threshold=0.9, steps=8, block_length=32, eos_early_stop=True)
    out = run(model, prompt.unsqueeze(0), **settings)
    expected_ids, expected_forwards = reference_generate(model, prompt, eos_id=EOS, mask_id=MASK, **settings)
    assert out.sequences[0].tolist() == expected_ids
    assert out.num_forward_passes == expected_forwards
    assert out.sequences.shape[1] > 20


# --------------------------------------------------------------------------------------------------------------------
# Output format, argument names and generation configs
# --------------------------------------------------------------------------------------------------------------------


def test_output_tensor_and_dict(model):
    prompts = [prompt_ids(70, seed=70), prompt_ids(33, seed=33)]
    ids, mask = left_pad(prompts)
    settings = dict(gen_length=17, threshold=0.5, steps=4)
    tensor = model.generate(ids, attention_mask=mask, **settings)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.long
    assert torch.equal(tensor[:, : ids.shape[1]], ids)
    out = model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, **settings)
    assert isinstance(out, LLaDA2GenerateOutput)
    assert torch.equal(out.sequences, tensor)
    assert isinstance(out.num_forward_passes, int) and out.num_forward_passes > 0
    assert out.history is None
    # A 1-D prompt is a batch of one.
    single = model.generate(prompts[1], **settings)
    assert single.shape[0] == 1 and single[0, 33:].tolist() == generated_rows(tensor, ids.shape[1])[1]
    assert generated_rows(tensor, ids.shape[1])[0][-1] == EOS


def test_eos_cut_and_padding(model):
    prompts = [prompt_ids(70, seed=70), prompt_ids(33, seed=33)]
    ids, mask = left_pad(prompts)
    out = model.generate(ids, attention_mask=mask, gen_length=17, threshold=0.5, steps=4)
    generated = out[:, ids.shape[1] :]
    assert generated.shape[1] == 17  # the longest row decides the width
    row = generated[0].tolist()
    first = row.index(EOS)
    assert first < 16 and all(t == PAD for t in row[first + 1 :])
    # When every row stops early, the width shrinks to the longest row.
    short = model.generate(prompts[0].unsqueeze(0), gen_length=17, threshold=0.5, steps=4)
    assert short.shape[1] == 70 + first + 1 and short[0, -1] == EOS


def test_history(model):
    prompts = [prompt_ids(5, seed=5), prompt_ids(12, seed=12)]
    ids, mask = left_pad(prompts)
    settings = dict(gen_length=40, threshold=0.9, steps=8, block_length=16)
    out = run(model, ids, attention_mask=mask, output_history=True, **settings)
    history = out.history
    assert isinstance(history, tuple) and len(history) == out.num_forward_passes
    assert all(h.shape == (2, 40) for h in history)
    assert (history[0] == MASK).any()
    for before, after in zip(history, history[1:]):
        decided = before != MASK
        assert torch.equal(after[decided], before[decided])  # committed tokens are final
        assert (after != MASK).sum() > (before != MASK).sum()  # every forward commits at least one token
    # The last snapshot is the result (before the EOS cut: positions after a row's EOS may still be masks).
    final = out.sequences[:, ids.shape[1] :]
    last = history[-1][:, : final.shape[1]]
    for row in range(2):
        expected = final[row].tolist()
        n = expected.index(EOS) + 1 if EOS in expected else len(expected)
        assert last[row, :n].tolist() == expected[:n]
    # No history unless asked; the ids do not depend on it.
    plain = run(model, ids, attention_mask=mask, **settings)
    assert plain.history is None and torch.equal(plain.sequences, out.sequences)


def test_original_keyword_names(model):
    ids = prompt_ids(40, seed=40).unsqueeze(0)
    # The mask id changes the canvas the model sees; pick as EOS a token that this canvas produces mid-way.
    plain = model.generate(ids, gen_length=17, mask_token_id=125, steps=4)[0, 40:].tolist()
    eos = next(t for i, t in enumerate(plain) if i >= 2 and t not in plain[:i])
    canonical = model.generate(ids, gen_length=17, eos_token_id=eos, mask_token_id=125, steps=4)
    aliased = model.generate(ids, max_new_tokens=17, eos_id=eos, mask_id=125, steps=4)
    assert torch.equal(canonical, aliased)
    assert aliased[0, -1] == eos and aliased.shape[1] == 40 + plain.index(eos) + 1
    assert not torch.equal(model.generate(ids, max_new_tokens=17, steps=4)[0, 40:], torch.tensor(plain))


def test_generation_config_object_and_overrides(model):
    ids = prompt_ids(31, seed=31).unsqueeze(0)
    config = LLaDA2GenerationConfig(gen_length=20, steps=4, threshold=0.5, block_length=8)
    before = config.to_dict()
    from_config = run(model, ids, generation_config=config)
    direct = run(model, ids, gen_length=20, steps=4, threshold=0.5, block_length=8)
    assert torch.equal(from_config.sequences, direct.sequences)
    assert from_config.num_forward_passes == direct.num_forward_passes
    overridden = run(model, ids, generation_config=config, threshold=1.0, block_length=4)
    direct = run(model, ids, gen_length=20, steps=4, threshold=1.0, block_length=4)
    assert torch.equal(overridden.sequences, direct.sequences)
    assert overridden.num_forward_passes == direct.num_forward_passes
    assert overridden.num_forward_passes != from_config.num_forward_passes
    assert config.to_dict() == before  # generate() does not mutate the caller's config
    # The original names work inside a config too.
    aliased = run(model, ids, generation_config=LLaDA2GenerationConfig(max_new_tokens=20, steps=4, threshold=0.5,
                                                                       block_length=8))
    assert torch.equal(aliased.sequences, from_config.sequences)


def test_model_generation_config_and_config_defaults(model):
    ids = prompt_ids(31, seed=31).unsqueeze(0)
    saved = model.generation_config
    try:
        model.generation_config = LLaDA2GenerationConfig(gen_length=20, steps=4, threshold=0.5, block_length=8,
                                                         return_dict_in_generate=True)
        out = model.generate(ids)
        assert isinstance(out, LLaDA2GenerateOutput)
        direct = run(model, ids, generation_config=LLaDA2GenerationConfig(), gen_length=20, steps=4, threshold=0.5,
                     block_length=8)
        assert torch.equal(out.sequences, direct.sequences)
        assert out.num_forward_passes == direct.num_forward_passes
        # A keyword still wins over the model's generation config.
        assert model.generate(ids, return_dict_in_generate=False, gen_length=5).shape[1] <= 31 + 5
    finally:
        model.generation_config = saved
    # A generation config that leaves block_length unset takes config.block_length.
    saved_block = model.config.block_length
    try:
        model.config.block_length = 8
        from_model_config = run(model, ids, generation_config=LLaDA2GenerationConfig(), gen_length=20, steps=4,
                                threshold=0.5)
    finally:
        model.config.block_length = saved_block
    assert torch.equal(from_model_config.sequences, run(model, ids, gen_length=20, steps=4, threshold=0.5,
                                                        block_length=8).sequences)


def test_generation_config_save_load(tmp_path):
    config = LLaDA2GenerationConfig(gen_length=20, steps=4, threshold=0.5, block_length=8, eos_early_stop=True,
                                    temperature=0.7, top_k=5, top_p=0.9)
    config.save_pretrained(tmp_path)
    loaded = LLaDA2GenerationConfig.from_pretrained(tmp_path)
    for key in ("gen_length", "steps", "threshold", "block_length", "eos_early_stop", "temperature", "top_k", "top_p"):
        assert getattr(loaded, key) == getattr(config, key)


def test_plain_transformers_generation_config(model):
    # A stock GenerationConfig (e.g. a Hub generation_config.json) works: max_new_tokens is gen_length.
    from transformers import GenerationConfig

    ids = prompt_ids(31, seed=31).unsqueeze(0)
    plain = run(model, ids, generation_config=GenerationConfig(max_new_tokens=20), steps=4, threshold=0.5)
    direct = run(model, ids, gen_length=20, steps=4, threshold=0.5)
    assert torch.equal(plain.sequences, direct.sequences)


# --------------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_with_a_generator(model):
    ids = prompt_ids(33, seed=33).unsqueeze(0)
    settings = dict(gen_length=40, threshold=0.9, steps=8, temperature=1.0)

    def sample(seed, cache=True):
        return run(model, ids, generator=torch.Generator().manual_seed(seed), use_block_cache=cache, **settings)

    first, again = sample(0), sample(0)
    assert torch.equal(first.sequences, again.sequences)
    assert first.num_forward_passes == again.num_forward_passes
    assert torch.equal(sample(0, cache=False).sequences, first.sequences)
    greedy = run(model, ids, gen_length=40, threshold=0.9, steps=8)
    others = [sample(seed).sequences for seed in (1, 2, 3)]
    assert any(not torch.equal(o, first.sequences) for o in others)
    assert any(not torch.equal(o, greedy.sequences) for o in [first.sequences, *others])


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    # With top_k=1 (or a tiny top_p) the sample is the argmax and its filtered probability is 1, so every masked
    # position beats the threshold and each block is committed in one step: exactly greedy decoding with steps=1.
    ids = prompt_ids(33, seed=33).unsqueeze(0)
    greedy = run(model, ids, gen_length=40, steps=1)
    for filtering in (dict(top_k=1), dict(top_p=1e-6)):
        out = run(model, ids, gen_length=40, steps=8, threshold=0.9, temperature=0.7,
                  generator=torch.Generator().manual_seed(0), **filtering)
        assert torch.equal(out.sequences, greedy.sequences)
        assert out.num_forward_passes == greedy.num_forward_passes == 2


def test_top_k_limits_the_candidates(model):
    from transformers_llada_uni.generation_llada2_uni import sample_tokens

    torch.manual_seed(0)
    logits = torch.randn(4, 16, 128) * 3
    top3 = logits.topk(3, dim=-1).indices
    tokens, confidence = sample_tokens(logits, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(1))
    assert (tokens.unsqueeze(-1) == top3).any(-1).all()
    assert ((confidence > 0) & (confidence <= 1)).all()
    greedy_tokens, greedy_conf = sample_tokens(logits)
    assert torch.equal(greedy_tokens, logits.argmax(-1))
    assert torch.allclose(greedy_conf, logits.softmax(-1).amax(-1))


# --------------------------------------------------------------------------------------------------------------------
# Streamer
# --------------------------------------------------------------------------------------------------------------------


class RecordingStreamer:
    def __init__(self):
        self.chunks = []
        self.ended = 0

    def put(self, value):
        assert self.ended == 0
        self.chunks.append(value.tolist())

    def end(self):
        self.ended += 1


class DraftStreamer(RecordingStreamer):
    def __init__(self):
        super().__init__()
        self.drafts = []

    def put_draft(self, value):
        self.drafts.append(value.tolist())


@pytest.mark.parametrize(
    "prompt_length, gen_length, threshold, steps, block_length, early",
    [
        (5, 17, 0.5, 4, 32, False),  # gen_length ends inside the block: the block's tail is not streamed
        (33, 40, 0.9, 8, 8, False),
        (12, 64, 0.9, 8, 32, False),  # EOS
        (70, 64, 0.9, 8, 32, True),  # EOS, early stop
        (32, 17, 0.9, 4, 4, True),  # EOS, early stop, small blocks
        (31, 10, 0.9, 8, 4, False),
    ],
)
def test_streamer_receives_prompt_then_generated_tokens(model, prompt_length, gen_length, threshold, steps,
                                                        block_length, early):
    prompt = prompt_ids(prompt_length, seed=prompt_length)
    streamer = RecordingStreamer()
    settings = dict(gen_length=gen_length, block_length=block_length, threshold=threshold, steps=steps,
                    eos_early_stop=early)
    out = model.generate(prompt.unsqueeze(0), streamer=streamer, **settings)
    assert streamer.ended == 1
    assert streamer.chunks[0] == prompt.tolist()
    streamed = [t for chunk in streamer.chunks[1:] for t in chunk]
    assert streamed == out[0, prompt_length:].tolist()
    assert all(len(chunk) <= block_length for chunk in streamer.chunks[1:])
    assert EOS not in streamed[:-1]


def test_streamer_drafts(model):
    prompt = prompt_ids(33, seed=33)
    streamer = DraftStreamer()
    out = run(model, prompt.unsqueeze(0), streamer=streamer, gen_length=40, threshold=0.9, steps=8, block_length=16)
    assert len(streamer.drafts) == out.num_forward_passes
    assert all(0 < len(d) <= 16 for d in streamer.drafts)
    assert any(MASK in d for d in streamer.drafts)
    assert [t for c in streamer.chunks[1:] for t in c] == out.sequences[0, 33:].tolist()


def test_streamer_rejects_batches(model):
    ids, mask = left_pad([prompt_ids(5, seed=5), prompt_ids(6, seed=6)])
    with pytest.raises(ValueError, match="streamer"):
        model.generate(ids, attention_mask=mask, gen_length=4, streamer=RecordingStreamer())


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(block_length=0), "block_length"),
    (dict(block_length=-8), "block_length"),
    (dict(gen_length=0), "gen_length"),
    (dict(gen_length=-5), "gen_length"),
    (dict(max_new_tokens=0), "gen_length"),
    (dict(threshold=0), "threshold"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(threshold=-0.5), "threshold"),
    (dict(temperature=-0.1), "temperature"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(minimal_topk=0), "minimal_topk"),
    (dict(gen_length=4, minimal_topk=5), "minimal_topk"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(mask_token_id=128), "mask_token_id"),
    (dict(mask_id=-1), "mask_token_id"),
    (dict(eos_token_id=500), "eos_token_id"),
    (dict(pad_token_id=128), "pad_token_id"),
    (dict(gen_lenght=8), "gen_lenght"),
    (dict(foo=1), "foo"),
]


@pytest.mark.parametrize("kwargs, name", BAD_ARGUMENTS, ids=[f"{k}-{n}" for k, n in BAD_ARGUMENTS])
def test_bad_arguments_raise_before_any_forward(model, kwargs, name):
    ids = prompt_ids(5, seed=5).unsqueeze(0)
    kwargs = {"gen_length": 8, **kwargs}
    counter = ForwardCounter(model)
    try:
        with pytest.raises(ValueError, match=name):
            model.generate(ids, **kwargs)
    finally:
        counter.remove()
    assert counter.count == 0


def test_bad_generation_config_object(model):
    ids = prompt_ids(5, seed=5).unsqueeze(0)
    with pytest.raises(ValueError, match="threshold"):
        model.generate(ids, generation_config=LLaDA2GenerationConfig(gen_length=8, threshold=2.0))


def test_lengths_beyond_max_position_embeddings(model):
    saved = model.config.max_position_embeddings
    try:
        model.config.max_position_embeddings = 64
        with pytest.raises(ValueError, match="max_position_embeddings"):
            model.generate(prompt_ids(70, seed=70).unsqueeze(0), gen_length=4)
        with pytest.raises(ValueError, match="gen_length"):
            model.generate(prompt_ids(40, seed=40).unsqueeze(0), gen_length=30)
        ids, mask = left_pad([prompt_ids(3, seed=3), prompt_ids(70, seed=70)])
        with pytest.raises(ValueError, match="max_position_embeddings"):
            model.generate(ids, attention_mask=mask, gen_length=4)
        # Exactly at the limit is fine (a padded batch counts its longest real prompt, not the padded width).
        model.generate(prompt_ids(40, seed=40).unsqueeze(0), gen_length=24, steps=1)
    finally:
        model.config.max_position_embeddings = saved


def test_mask_token_id_required():
    config = LLaDA2MoeConfig(**tiny_config_kwargs(mask_token_id=None))
    assert config.mask_token_id is None  # the real id 156895 does not fit the tiny vocabulary
    torch.manual_seed(0)
    model = LLaDA2MoeForCausalLM(config).eval()
    ids = prompt_ids(5, seed=5).unsqueeze(0)
    with pytest.raises(ValueError, match="mask_token_id"):
        model.generate(ids, gen_length=4)
    assert model.generate(ids, gen_length=4, steps=1, mask_id=MASK).shape[0] == 1


@pytest.mark.parametrize(
    "mask, name",
    [
        ([[1, 1, 1, 0]], "attention_mask"),  # right padding
        ([[0, 1, 0, 1]], "attention_mask"),  # holes
        ([[0, 0, 0, 0]], "attention_mask"),  # no real token
        ([[1, 1, 1]], "attention_mask"),  # wrong shape
    ],
)
def test_bad_attention_mask(model, mask, name):
    ids = prompt_ids(4, seed=4).unsqueeze(0)
    with pytest.raises(ValueError, match=name):
        model.generate(ids, attention_mask=torch.tensor(mask), gen_length=4)


def test_missing_inputs(model):
    with pytest.raises(ValueError, match="inputs"):
        model.generate(gen_length=4)


# --------------------------------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------------------------------


def test_block_diffusion_cache_write_and_crop():
    cache = BlockDiffusionCache(capacity=10)
    assert cache.get_seq_length() == 0
    k1, v1 = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 5)
    for layer in range(2):
        keys, values = cache.update(k1 + layer, v1 + layer, layer)
        assert keys.shape == (1, 2, 4, 3) and values.shape == (1, 2, 4, 5)
        assert torch.equal(keys, k1 + layer) and torch.equal(values, v1 + layer)
    # Nothing counts as cached until crop() says how much of the last write to keep.
    assert cache.get_seq_length() == 0
    cache.crop(2)
    assert cache.get_seq_length() == 2
    k2, v2 = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 5)
    keys, values = cache.update(k2, v2, 0)
    assert torch.equal(keys, torch.cat([k1[..., :2, :], k2], dim=-2))
    assert torch.equal(values, torch.cat([v1[..., :2, :], v2], dim=-2))
    # The same step again overwrites instead of appending.
    k3 = torch.randn(1, 2, 3, 3)
    keys, _ = cache.update(k3, v2, 0)
    assert torch.equal(keys, torch.cat([k1[..., :2, :], k3], dim=-2))
    # Layer 1 still holds its own first write.
    keys, _ = cache.update(k2, v2, 1)
    assert torch.equal(keys[..., :2, :], (k1 + 1)[..., :2, :])
    with pytest.raises(ValueError, match="10"):
        cache.update(torch.randn(1, 2, 9, 3), torch.randn(1, 2, 9, 5), 0)


def _block_causal(total, block_length):
    block_of = torch.arange(total) // block_length
    return (block_of[:, None] >= block_of[None, :])[None, None]


def test_cache_argument_takes_either_name_and_output_keeps_it(model, monkeypatch):
    """Newer transformers 5 releases call the cache `cache` and warn on `past_key_values`: both names are accepted,
    the output carries the cache under the field its class declares, and no deprecation warning is logged."""
    import transformers.utils.generic as generic

    warned = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda message, *a, **k: warned.append(message))
    ids = torch.randint(0, PROMPT_VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = BlockDiffusionCache(32), BlockDiffusionCache(32)
        old = model(ids, past_key_values=first)
        new = model(ids, cache=second)
        torch.testing.assert_close(old.logits, new.logits)
        field = "cache" if "cache" in type(old).__dataclass_fields__ else "past_key_values"
        assert getattr(old, field) is first and getattr(new, field) is second
        with pytest.raises(ValueError, match="not both"):
            model(ids, past_key_values=first, cache=second)
    assert not [message for message in warned if "deprecated" in message]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("cache_kind", ["dynamic", "block"])
def test_prefix_cache_gives_full_forward_logits(model, attn_implementation, cache_kind):
    torch.manual_seed(0)
    ids = torch.randint(0, PROMPT_VOCAB, (2, 64))
    allowed = _block_causal(64, 16).expand(2, 1, 64, 64)
    positions = torch.arange(64).expand(2, 64)
    saved = model.config._attn_implementation
    model.set_attn_implementation(attn_implementation)
    try:
        with torch.no_grad():
            full = model(ids, attention_mask=allowed, position_ids=positions).logits
            cache = DynamicCache(config=model.config) if cache_kind == "dynamic" else BlockDiffusionCache(64)
            model(ids[:, :48], attention_mask=allowed[..., :48, :48], position_ids=positions[:, :48],
                  past_key_values=cache)
            if cache_kind == "block":
                cache.crop(48)
            assert cache.get_seq_length() == 48
            block = model(ids[:, 48:], attention_mask=allowed[..., 48:, :], position_ids=positions[:, 48:],
                          past_key_values=cache).logits
            torch.testing.assert_close(block, full[:, 48:], atol=1e-5, rtol=1e-5)
            # Drop the step's entries and run the block again (default positions continue after the cache) with an
            # additive mask.
            if cache_kind == "dynamic":
                cache.crop(-16)
            else:
                cache.crop(48)
            additive = torch.zeros(2, 1, 16, 64).masked_fill(~allowed[..., 48:, :], float("-inf"))
            again = model(ids[:, 48:], attention_mask=additive, past_key_values=cache).logits
            torch.testing.assert_close(again, full[:, 48:], atol=1e-5, rtol=1e-5)
            # logits_to_keep keeps the last positions only.
            cache.crop(-16) if cache_kind == "dynamic" else cache.crop(48)
            kept = model(ids[:, 48:], attention_mask=additive, past_key_values=cache, logits_to_keep=4).logits
            torch.testing.assert_close(kept, full[:, -4:], atol=1e-5, rtol=1e-5)
    finally:
        model.set_attn_implementation(saved)
