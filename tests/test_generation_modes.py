"""Image-token generation on the composite model: CFG (two- and three-way), vocabulary restriction, caching."""

import math

import pytest
import torch

from conftest import tiny_config_kwargs
from transformers_llada_uni import LLaDA2UniConfig, LLaDA2UniForConditionalGeneration

TEXT_VOCAB, CODEBOOK = 96, 32
MASK, EOI = 90, 91


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(4)
    text = tiny_config_kwargs(vocab_size=TEXT_VOCAB + CODEBOOK, mask_token_id=MASK, eos_token_id=92, pad_token_id=92,
                              bos_token_id=93, initializer_range=0.1)
    config = LLaDA2UniConfig(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_heads=2, depth=1, patch_size=16, image_size=64),
        vq_config=dict(num_embeddings=CODEBOOK, embed_dim=16, latent_channels=32),
        image_start_token_id=88, image_end_token_id=EOI, boi_token_id=89,
    )
    model = LLaDA2UniForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    return model


def reference_cfg(model, cond, uncond_rows, scales, count, steps, threshold, block=32, restrict=True):
    """The LLaDA-Image CFG loop, written from the spec: full prefix, rows [cond, *uncond] in one batch."""
    P = len(cond)
    total = math.ceil((P + count) / block) * block
    x = torch.full((total,), MASK)
    x[:P] = torch.tensor(cond)
    block_ids = torch.arange(total) // block
    allowed = block_ids[:, None] >= block_ids[None, :]
    rows, masks, positions = [], [allowed], [torch.arange(total)]
    for uncond in uncond_rows:
        pad = P - len(uncond)
        m = allowed.clone()
        m[:, :pad] = False
        m[torch.arange(pad), torch.arange(pad)] = True  # padding queries see themselves (never read by others)
        masks.append(m)
        positions.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.arange(total - pad)]))
        rows.append([MASK] * pad + list(uncond))
    base, extra = divmod(block, steps)
    quotas = [base + (s < extra) for s in range(steps)]
    forwards = 0
    for b in range(P // block, total // block):
        end = (b + 1) * block
        for s in range(steps):
            active = x[end - block : end] == MASK
            if not active.any():
                break
            batch = [x[:end].clone()]
            for prefix in rows:
                u = x[:end].clone()
                u[:P] = torch.tensor(prefix)
                batch.append(u)
            ids = torch.stack(batch)
            mask = torch.stack([m[:end, :end] for m in masks]).unsqueeze(1)
            pos = torch.stack([p[:end] for p in positions])
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -block:]
            forwards += 1
            c = logits[0]
            g = c
            if uncond_rows:
                u = logits[1]
                g = u + scales[0] * (c - u)
                if len(uncond_rows) == 2:
                    g = g + scales[1] * (u - logits[2])
            if restrict:
                keep = torch.zeros(g.shape[-1], dtype=torch.bool)
                keep[TEXT_VOCAB:] = True
                g = g.masked_fill(~keep, float("-inf"))
            probs = g.softmax(-1)
            conf, tok = probs.max(-1)
            conf = torch.where(active, conf, torch.tensor(float("-inf")))
            above = conf > threshold
            if above.sum() >= quotas[s]:
                commit = above
            else:
                commit = torch.zeros_like(active)
                commit[conf.topk(min(quotas[s], int(active.sum()))).indices] = True
            x[end - block : end] = torch.where(commit, tok, x[end - block : end])
    return (x[P : P + count] - TEXT_VOCAB).tolist(), forwards


CASES = [
    # prompt length, uncond length, grid, cfg, image cfg, steps
    (20, 14, (3, 5), 2.0, 0.0, 4),
    (32, 25, (4, 4), 3.0, 0.0, 8),
    (45, 38, (5, 7), 1.5, 0.0, 8),
    (33, 20, (4, 5), 4.0, 1.5, 6),
]


@pytest.mark.parametrize("case", CASES, ids=[f"P{c[0]}_U{c[1]}_{c[2][0]}x{c[2][1]}_s{c[3]}_i{c[4]}" for c in CASES])
@pytest.mark.parametrize("use_cache", [True, False])
def test_cfg_matches_reference_loop(model, case, use_cache):
    P, U, (h, w), scale, image_scale, steps = case
    g = torch.Generator().manual_seed(P)
    cond = torch.randint(0, 80, (P,), generator=g)
    cond[-1] = 89
    uncond = torch.cat([torch.randint(0, 80, (U - 1,), generator=g), torch.tensor([89])])
    no_image = uncond[-max(U - 6, 2):]
    rows = [uncond.tolist()] + ([no_image.tolist()] if image_scale else [])
    expected, forwards = reference_cfg(model, cond.tolist(), rows, (scale, image_scale), h * w, steps, 0.9)
    out = model.generate_image_tokens(
        cond, uncond_input_ids=uncond, uncond_image_input_ids=no_image if image_scale else None, height=h, width=w,
        cfg_scale=scale, cfg_image_scale=image_scale, steps=steps, threshold=0.9, use_block_cache=use_cache,
    )
    assert out["token_ids"][0].tolist() == expected
    assert out["num_forward_passes"] == forwards
    assert out["token_ids"].shape == (1, h * w)


def test_restriction_keeps_codes_in_codebook(model):
    cond = torch.randint(0, 80, (1, 30))
    out = model.generate_image_tokens(cond, height=6, width=6, steps=4)
    assert out["token_ids"].min() >= 0 and out["token_ids"].max() < CODEBOOK


def test_history_shows_each_forward(model):
    cond = torch.randint(0, 80, (1, 30), generator=torch.Generator().manual_seed(2))
    out = model.generate_image_tokens(cond, height=6, width=6, steps=4, output_history=True)
    assert "history" not in model.generate_image_tokens(cond, height=6, width=6, steps=4)
    history = torch.stack(out["history"])  # [forwards, 1, 36]
    assert len(history) == out["num_forward_passes"]
    offset, mask_id = model.config.image_token_offset, model.config.get_text_config().mask_token_id
    assert torch.equal(history[-1], out["token_ids"] + offset)
    committed = history != mask_id
    assert (committed[1:] >= committed[:-1]).all()  # committed cells stay committed, with the same value
    assert (history[1:][committed[:-1]] == history[:-1][committed[:-1]]).all()


def test_unrestricted_can_pick_text_ids(model):
    cond = torch.randint(0, 80, (1, 30), generator=torch.Generator().manual_seed(1))
    out = model.generate_image_tokens(cond, height=6, width=6, steps=4, restrict_to_image_vocab=False)
    assert (out["token_ids"] < 0).any()


def test_batch_rows_match_single_rows(model):
    g = torch.Generator().manual_seed(5)
    cond = torch.randint(0, 80, (2, 27), generator=g)
    uncond = torch.randint(0, 80, (2, 19), generator=g)
    batch = model.generate_image_tokens(cond, uncond_input_ids=uncond, height=4, width=6, cfg_scale=2.5, steps=4)
    for row in range(2):
        single = model.generate_image_tokens(cond[row], uncond_input_ids=uncond[row], height=4, width=6,
                                             cfg_scale=2.5, steps=4)
        assert batch["token_ids"][row].tolist() == single["token_ids"][0].tolist()


def test_seeded_sampling_is_reproducible(model):
    cond = torch.randint(0, 80, (1, 30), generator=torch.Generator().manual_seed(2))
    runs = [model.generate_image_tokens(cond, height=4, width=4, temperature=1.0, steps=4,
                                        generator=torch.Generator().manual_seed(seed))["token_ids"]
            for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(height=0, width=4), "height"),
        (dict(height=4, width=-1), "width"),
        (dict(height=4, width=4, cfg_scale=-1.0), "cfg_scale"),
        (dict(height=4, width=4, cfg_image_scale=2.0), "cfg_image_scale"),
        (dict(height=4, width=4, uncond_input_ids=torch.zeros(2, 5, dtype=torch.long)), "uncond_input_ids"),
        (dict(height=100, width=100), "max_position_embeddings"),
        (dict(height=4, width=4, threshold=1.5), "threshold"),
    ],
)
def test_bad_input(model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        model.generate_image_tokens(torch.randint(0, 80, (1, 12)), **kwargs)


def test_cfg_combines_known_logits(model, monkeypatch):
    """With the forward replaced by fixed logits, the committed codes are the argmax of U + s_t (C - U) + s_i (U - N)
    over the image codes."""
    from types import SimpleNamespace

    vocab = TEXT_VOCAB + CODEBOOK
    g = torch.Generator().manual_seed(0)
    known = torch.randn(3, 32, vocab, generator=g)  # rows: cond, text-dropped, image-dropped

    def fixed_forward(input_ids=None, logits_to_keep=0, **kwargs):
        return SimpleNamespace(logits=known[: input_ids.shape[0], -logits_to_keep:])

    monkeypatch.setattr(model, "forward", fixed_forward)
    cond, uncond, no_image = torch.randint(0, 80, (10,)), torch.randint(0, 80, (8,)), torch.randint(0, 80, (4,))
    out = model.generate_image_tokens(cond, uncond_input_ids=uncond, uncond_image_input_ids=no_image, height=2,
                                      width=2, cfg_scale=3.0, cfg_image_scale=0.5, steps=1, threshold=1.0)
    c, u, n = known
    guided = u + 3.0 * (c - u) + 0.5 * (u - n)
    expected = guided[10:14, TEXT_VOCAB:].argmax(-1)  # the 4 generated positions follow the 10-token prompt
    assert out["token_ids"][0].tolist() == expected.tolist()
    assert out["num_forward_passes"] == 1
