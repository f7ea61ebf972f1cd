"""The training objectives computed by `forward(labels=...)`: the block mask of [x_t ; x_0], which positions are
supervised, the loss against a hand computation, and how the objective is chosen (a setting, never the tokens)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config_kwargs
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM
from transformers_llada_uni.training_llada2_uni import (
    DiffusionTrainingArguments,
    block_diffusion_mask,
    diffusion_loss,
    sample_masks,
)

MASK = 127


def make_model(seed=0, **training):
    torch.manual_seed(seed)
    config = LLaDA2MoeConfig(**tiny_config_kwargs(block_length=4), diffusion_training=training or None)
    return LLaDA2MoeForCausalLM(config).eval()


def test_block_mask_by_hand():
    # L = 4, block 2: blocks (0, 0, 1, 1). Rows/columns 0-3 are x_t, 4-7 are x_0.
    mask = block_diffusion_mask(torch.ones(1, 4, dtype=torch.bool), 2)[0, 0].int()
    expected = torch.tensor([
        # x_t keys   x_0 keys
        [1, 1, 0, 0, 0, 0, 0, 0],  # x_t block 0: its own block only
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],  # x_t block 1: its own block + clean block 0
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],  # x_0 block 0: clean block 0 (block-causal)
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],  # x_0 block 1: clean blocks 0-1, never x_t
        [0, 0, 0, 0, 1, 1, 1, 1],
    ])
    assert torch.equal(mask, expected)


def test_block_mask_padding_and_full_variant():
    padding = torch.tensor([[True, True, True, False]])
    mask = block_diffusion_mask(padding, 2)[0, 0]
    assert not mask[:3, 3].any() and not mask[4:7, 7].any() and not mask[:3, 7].any()  # padding keys, both halves
    assert mask[3, 3] and mask[7, 7]  # a padding query (output unused) also sees itself: no empty softmax row
    full = block_diffusion_mask(padding, 2, with_clean=False)[0, 0]
    assert full.shape == (4, 4) and full[:3, :3].all() and not full[:3, 3].any()


def test_clean_half_never_sees_the_noisy_half():
    """Through the model: changing x_t leaves the x_0 half's outputs unchanged (up to float noise: other x_t tokens
    route to other experts, which regroups the expert matmuls)."""
    model = make_model()
    clean = torch.randint(0, 120, (1, 8), generator=torch.Generator().manual_seed(1))
    mask = block_diffusion_mask(torch.ones(1, 8, dtype=torch.bool), 4)
    positions = torch.arange(8).repeat(2)[None]
    outs = []
    for seed in (2, 3):
        noisy = torch.randint(0, 120, (1, 8), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            outs.append(model(torch.cat([noisy, clean], 1), attention_mask=mask, position_ids=positions).logits)
    torch.testing.assert_close(outs[0][:, 8:], outs[1][:, 8:], atol=1e-6, rtol=0)
    assert (outs[0][:, :8] - outs[1][:, :8]).abs().max() > 1e-2


def test_only_supervised_positions_are_masked():
    supervised = torch.zeros(3, 10, dtype=torch.bool)
    supervised[:, 4:8] = True
    args = DiffusionTrainingArguments(mask_ratio_min=0.9, mask_ratio_max=1.0, block_length=4)
    masked, t, rows = sample_masks(supervised, args, generator=torch.Generator().manual_seed(0))
    assert not (masked & ~supervised).any() and masked.any()
    assert ((t >= 0.9) & (t <= 1.0)).all() and rows.tolist() == [0, 1, 2]


def test_complementary_masking_covers_every_supervised_token_once():
    supervised = torch.rand(4, 12, generator=torch.Generator().manual_seed(1)) < 0.6
    args = DiffusionTrainingArguments(complementary_masking=True, block_length=4)
    masked, t, rows = sample_masks(supervised, args, generator=torch.Generator().manual_seed(2))
    assert masked.shape == (8, 12) and rows.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert torch.equal(masked[:4] ^ masked[4:], supervised) and not (masked[:4] & masked[4:]).any()
    torch.testing.assert_close(t[4:], (1 - t[:4]).clamp(min=args.mask_ratio_min))


def test_loss_by_hand():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([[1, 2, 3], [4, 0, 1]])
    masked = torch.tensor([[True, False, True], [False, True, False]])
    t = torch.tensor([0.5, 0.25])
    supervised_count = torch.tensor(5)

    def ce(i, j):
        return -F.log_softmax(logits[i, j], -1)[targets[i, j]]

    weighted = (ce(0, 0) / 0.5 + ce(0, 2) / 0.5 + ce(1, 1) / 0.25) / 5
    torch.testing.assert_close(diffusion_loss(logits, targets, masked, t, supervised_count, "inverse_t"), weighted)
    plain = (ce(0, 0) + ce(0, 2) + ce(1, 1)) / 3
    torch.testing.assert_close(diffusion_loss(logits, targets, masked, t, supervised_count, "none"), plain)


@pytest.mark.parametrize("objective", ["block", "full"])
def test_forward_loss_equals_the_manual_computation(objective):
    model = make_model(objective=objective, mask_ratio_min=0.3, mask_ratio_max=0.8)
    ids = torch.randint(0, 120, (2, 8), generator=torch.Generator().manual_seed(4))
    padding = torch.ones(2, 8, dtype=torch.long)
    padding[1, 6:] = 0
    labels = ids.masked_fill(torch.arange(8) < 3, -100).masked_fill(padding == 0, -100)  # prompt of 3, padding
    with torch.no_grad():
        out = model(ids, attention_mask=padding, labels=labels, generator=torch.Generator().manual_seed(5))
    # The same draws by hand.
    generator = torch.Generator().manual_seed(5)
    t = 0.3 + 0.5 * torch.rand(2, generator=generator)
    masked = (torch.rand(2, 8, generator=generator) < t[:, None]) & (labels != -100)
    noisy = ids.masked_fill(masked, MASK)
    if objective == "block":
        inputs, positions = torch.cat([noisy, ids], 1), torch.arange(8).repeat(2)[None].expand(2, -1)
    else:
        inputs, positions = noisy, torch.arange(8)[None].expand(2, -1)
    mask = block_diffusion_mask(padding.bool(), 4, with_clean=objective == "block")
    with torch.no_grad():
        logits = model(inputs, attention_mask=mask, position_ids=positions).logits[:, :8]
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    expected = (ce / t[:, None].expand(2, 8)[masked]).sum() / (labels != -100).sum()
    assert out.logits.shape == (2, 8, logits.shape[-1])
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)


def test_loss_trains(tmp_path):
    """A few optimizer steps on one batch lower the objective (gradients flow through [x_t ; x_0])."""
    model = make_model(mask_ratio_min=0.5, mask_ratio_max=0.5).train()
    ids = torch.randint(0, 120, (4, 8), generator=torch.Generator().manual_seed(6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        loss = model(ids, labels=ids, generator=torch.Generator().manual_seed(step % 3)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])


@pytest.mark.parametrize("where", ["argument", "config"])
def test_cross_entropy_objective_runs_the_inputs_as_given(where):
    model = make_model(objective="cross_entropy") if where == "config" else make_model()
    ids = torch.randint(0, 120, (1, 8), generator=torch.Generator().manual_seed(7))
    noisy = ids.clone()
    noisy[0, 2] = MASK
    labels = torch.full_like(ids, -100)
    labels[0, 2] = ids[0, 2]
    with torch.no_grad():
        out = model(noisy, labels=labels, **({"objective": "cross_entropy"} if where == "argument" else {}))
        plain = model(noisy).logits
    torch.testing.assert_close(out.logits, plain)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[0, 2:3], ids[0, 2:3]))


@pytest.mark.parametrize("objective", ["block", "full"])
def test_the_objective_does_not_depend_on_the_token_values(objective):
    """A clean batch that happens to hold the mask token id (in the prompt and in a supervised target) is trained with
    the configured objective, exactly as the same computation done by hand: nothing is read off the tokens."""
    model = make_model(objective=objective, mask_ratio_min=0.3, mask_ratio_max=0.8)
    ids = torch.randint(0, 120, (2, 8), generator=torch.Generator().manual_seed(11))
    ids[0, 1] = MASK  # an unsupervised prompt position
    ids[1, 6] = MASK  # a supervised one
    labels = ids.masked_fill(torch.arange(8) < 3, -100)
    with torch.no_grad():
        out = model(ids, labels=labels, generator=torch.Generator().manual_seed(12))
    generator = torch.Generator().manual_seed(12)
    t = 0.3 + 0.5 * torch.rand(2, generator=generator)
    masked = (torch.rand(2, 8, generator=generator) < t[:, None]) & (labels != -100)
    noisy = ids.masked_fill(masked, MASK)
    with_clean = objective == "block"
    inputs = torch.cat([noisy, ids], 1) if with_clean else noisy
    positions = torch.arange(8).repeat(2 if with_clean else 1)[None].expand(2, -1)
    mask = block_diffusion_mask(torch.ones(2, 8, dtype=torch.bool), 4, with_clean=with_clean)
    with torch.no_grad():
        logits = model(inputs, attention_mask=mask, position_ids=positions).logits[:, :8]
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    expected = (ce / t[:, None].expand(2, 8)[masked]).sum() / (labels != -100).sum()
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)
    # and the per-call choice overrides the config's whatever the batch holds
    with torch.no_grad():
        plain = model(ids, labels=labels, objective="cross_entropy")
    keep = labels != -100
    torch.testing.assert_close(plain.loss, F.cross_entropy(plain.logits[keep], ids[keep]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, ids: m(ids, labels=ids, objective="ar"), "objective"),
        (lambda m, ids: m(ids, objective="block"), "no `labels`"),
        (lambda m, ids: m(inputs_embeds=m.get_input_embeddings()(ids), labels=ids), "cross_entropy"),
    ],
)
def test_objective_choice_errors(call, match):
    model = make_model()
    ids = torch.randint(0, 120, (1, 8))
    with pytest.raises(ValueError, match=match):
        call(model, ids)


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda ids, labels, pad: {"labels": labels.masked_fill(labels >= 0, 5)}, "must equal `input_ids`"),
        (lambda ids, labels, pad: {"labels": labels, "attention_mask": pad}, "supervise padding"),
        (lambda ids, labels, pad: {"labels": labels[:, 1:]}, "shape"),
        (lambda ids, labels, pad: {"labels": labels, "attention_mask": torch.ones(1, 1, 8, 8, dtype=torch.bool)},
         "2-D padding"),
    ],
)
def test_bad_training_inputs(setup, match):
    model = make_model()
    ids = torch.randint(0, 120, (1, 8), generator=torch.Generator().manual_seed(8))
    pad = torch.ones(1, 8, dtype=torch.long)
    pad[0, -1] = 0
    with pytest.raises(ValueError, match=match):
        model(ids, **setup(ids, ids.clone(), pad))


@pytest.mark.parametrize(
    "settings, match",
    [({"objective": "ar"}, "objective"), ({"loss_weighting": "sqrt"}, "loss_weighting"),
     ({"mask_ratio_min": 0.0}, "mask ratios"), ({"mask_ratio_min": 0.9, "mask_ratio_max": 0.5}, "mask ratios"),
     ({"block_len": 4}, "unknown keys")],
)
def test_bad_settings(settings, match):
    model = make_model(**settings)
    ids = torch.randint(0, 120, (1, 8))
    with pytest.raises(ValueError, match=match):
        model(ids, labels=ids)
