"""The LLaDA2 MoE backbone: config, attention masks and backends, MoE routing and experts, dtypes, training, loading."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import randomize_expert_bias, tiny_config_kwargs
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM
from transformers_llada_uni.modeling_llada2_moe import LLaDA2MoeExperts, LLaDA2MoeSparseMoeBlock


def make_model(seed=0, init=0.1, **overrides):
    """A tiny random model with a non-zero expert_bias and weights large enough that routing and attention matter."""
    torch.manual_seed(seed)
    model = LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**tiny_config_kwargs(initializer_range=init, **overrides))).eval()
    return randomize_expert_bias(model)


@pytest.fixture(scope="module")
def model():
    return make_model()


def random_ids(batch, length, seed=0, high=125):
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def block_causal(batch, length, block_length):
    block_of = torch.arange(length) // block_length
    return (block_of[:, None] >= block_of[None, :]).expand(batch, 1, length, length)


def logits_of(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------

# The LLaDA2.0-Uni root config.json as published (original-system.md §4.1), plus one key from the future.
ORIGINAL_UNI_CONFIG = {
    "architectures": ["LLaDA2MoeModelLM"],
    "auto_map": {
        "AutoConfig": "configuration_llada2uni_moe.LLaDA2MoeConfig",
        "AutoModel": "modeling_llada2uni_moe.LLaDA2MoeModelLM",
        "AutoModelForCausalLM": "modeling_llada2uni_moe.LLaDA2MoeModelLM",
    },
    "model_type": "llada2_moe",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "vocab_size": 173568,
    "image_token_offset": 157184,
    "hidden_size": 2048,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "intermediate_size": 5120,
    "moe_intermediate_size": 512,
    "first_k_dense_replace": 1,
    "num_experts": 256,
    "num_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_bias": False,
    "use_qk_norm": True,
    "rms_norm_eps": 1e-06,
    "rope_theta": 600000,
    "partial_rotary_factor": 0.5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 600000, "partial_rotary_factor": 0.5},
    "max_position_embeddings": 8192,
    "attention_dropout": 0.0,
    "pad_token_id": 156892,
    "use_cache": False,
    "sliding_window": None,
    "output_router_logits": False,
    "some_future_key": {"kept": True},
}


def _check_uni(config):
    assert isinstance(config, LLaDA2MoeConfig)
    assert config.model_type == "llada2_moe"
    assert (config.vocab_size, config.image_token_offset, config.hidden_size) == (173568, 157184, 2048)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (16, 4, 128)
    assert (config.num_experts, config.num_experts_per_tok, config.n_group, config.topk_group) == (256, 8, 8, 4)
    assert config.routed_scaling_factor == 2.5 and config.rms_norm_eps == 1e-6
    assert config.rope_theta == 600000.0 and config.partial_rotary_factor == 0.5 and config.rotary_dim == 64
    assert config.rope_parameters["rope_type"] == "default"
    # The ids the original hard-codes become fields with the real values.
    assert config.mask_token_id == 156895
    assert config.eos_token_id == 156892 and config.pad_token_id == 156892
    assert config.bos_token_id == 156891
    # Unknown keys are kept; masks are never causal by default; the block length has its default.
    assert config.sliding_window is None
    assert config.some_future_key == {"kept": True}
    assert config.architectures == ["LLaDA2MoeModelLM"]
    assert config.is_causal is False and config.block_length == 32
    # auto_map points at this project's files (the original points at files it never ships).
    assert config.auto_map["AutoConfig"] == "configuration_llada2_uni.LLaDA2MoeConfig"
    assert config.auto_map["AutoModelForCausalLM"] == "modeling_llada2_moe.LLaDA2MoeForCausalLM"


def test_original_uni_config_loads(tmp_path):
    _check_uni(LLaDA2MoeConfig.from_dict(dict(ORIGINAL_UNI_CONFIG)))
    (tmp_path / "config.json").write_text(json.dumps(ORIGINAL_UNI_CONFIG))
    _check_uni(LLaDA2MoeConfig.from_pretrained(tmp_path))
    # The Auto classes pick this package's config for model_type "llada2_moe" without asking about remote code.
    _check_uni(AutoConfig.from_pretrained(tmp_path))


def test_config_round_trip(tmp_path):
    config = LLaDA2MoeConfig.from_dict(dict(ORIGINAL_UNI_CONFIG))
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mask_token_id"] == 156895 and saved["some_future_key"] == {"kept": True}
    reloaded = LLaDA2MoeConfig.from_pretrained(tmp_path)
    _check_uni(reloaded)
    first, second = config.to_dict(), reloaded.to_dict()
    first.pop("transformers_version", None)
    second.pop("transformers_version", None)
    assert first == second


def test_legacy_rope_keys_and_rope_parameters_precedence():
    legacy = {k: v for k, v in ORIGINAL_UNI_CONFIG.items() if k != "rope_parameters"}
    config = LLaDA2MoeConfig.from_dict(legacy)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 600000, "partial_rotary_factor": 0.5}
    wins = dict(ORIGINAL_UNI_CONFIG, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                        "partial_rotary_factor": 0.25})
    config = LLaDA2MoeConfig.from_dict(wins)
    assert config.rope_theta == 10000.0 and config.rotary_dim == 32


def test_ids_fall_back_only_when_they_fit_the_vocabulary():
    config = LLaDA2MoeConfig(**tiny_config_kwargs(mask_token_id=None, eos_token_id=None, pad_token_id=None,
                                                  bos_token_id=None))
    assert (config.mask_token_id, config.eos_token_id, config.pad_token_id, config.bos_token_id) == (None,) * 4
    config = LLaDA2MoeConfig(**tiny_config_kwargs(eos_token_id=None, pad_token_id=7))
    assert config.eos_token_id == 7  # the releases use one token for eos and pad
    config = LLaDA2MoeConfig()  # the real vocabulary: the real ids
    assert (config.mask_token_id, config.eos_token_id, config.pad_token_id) == (156895, 156892, 156892)


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(n_group=3), "n_group"),
        (dict(topk_group=5), "topk_group"),
        (dict(num_experts_per_tok=5), "num_experts_per_tok"),  # 2 kept groups x 2 experts = 4
        (dict(num_experts=4, n_group=4, topk_group=2), "2 experts"),  # groups of one expert have no top-2
        (dict(hidden_size=0), "hidden_size"),
        (dict(first_k_dense_replace=4), "first_k_dense_replace"),
        (dict(partial_rotary_factor=0.25, head_dim=4), "partial_rotary_factor"),
        (dict(rope_parameters={"rope_type": "spiral", "rope_theta": 1e4}), "rope_type"),
        (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4}), "factor"),
        (dict(mask_token_id=128), "mask_token_id"),
        (dict(eos_token_id=-1), "eos_token_id"),
        (dict(image_token_offset=129), "image_token_offset"),
        (dict(score_function="softmax"), "score_function"),
        (dict(use_bias=True), "use_bias"),
        (dict(block_length=0), "block_length"),
    ],
)
def test_impossible_shapes_raise(overrides, name):
    with pytest.raises(ValueError, match=name):
        LLaDA2MoeConfig(**tiny_config_kwargs(**overrides))


# --------------------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------------------

L = 40  # two blocks of 16 and a partial one


def _masks():
    allowed = block_causal(2, L, 16)
    neg_inf = torch.zeros(2, 1, L, L).masked_fill(~allowed, float("-inf"))
    finfo_min = torch.zeros(2, 1, L, L).masked_fill(~allowed, torch.finfo(torch.float32).min)
    padding = torch.ones(2, L, dtype=torch.long)
    padding[1, :5] = 0
    padded_block = allowed & padding.bool()[:, None, None, :]
    padded_block = padded_block | torch.eye(L, dtype=torch.bool)  # a padding query sees itself
    return {
        "bool_4d": allowed,
        "bool_4d_batch_broadcast": allowed[:1],
        "additive_neg_inf": neg_inf,
        "additive_finfo_min": finfo_min,
        "padding_2d": padding,
        "padding_and_block_bool": padded_block,
        "none": None,
    }


@pytest.fixture(scope="module")
def attention_logits(model):
    ids = random_ids(2, L, seed=1)
    results = {}
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        for name, mask in _masks().items():
            results[implementation, name] = logits_of(model, ids, attention_mask=mask)
    model.set_attn_implementation("sdpa")
    return results


@pytest.mark.parametrize("mask_name", list(_masks()))
def test_sdpa_and_eager_agree(attention_logits, mask_name):
    torch.testing.assert_close(attention_logits["eager", mask_name], attention_logits["sdpa", mask_name],
                               atol=1e-5, rtol=1e-5)


def test_mask_forms_are_equivalent(attention_logits, model):
    for implementation in ("sdpa", "eager"):
        reference = attention_logits[implementation, "bool_4d"]
        for name in ("bool_4d_batch_broadcast", "additive_neg_inf", "additive_finfo_min"):
            torch.testing.assert_close(attention_logits[implementation, name], reference, atol=1e-5, rtol=1e-5)
        # A 2-D all-ones mask is no mask.
        ones = logits_of(model, random_ids(2, L, seed=1), attention_mask=torch.ones(2, L))
        torch.testing.assert_close(ones, attention_logits["sdpa", "none"], atol=1e-5, rtol=1e-5)
    # The block mask really masks (a bool mask added as 0/1 by eager would not).
    assert (attention_logits["eager", "bool_4d"] - attention_logits["eager", "none"]).abs().max() > 1e-2
    # Padding: row 0 has none, so it equals the unmasked row; row 1 differs.
    torch.testing.assert_close(attention_logits["sdpa", "padding_2d"][0], attention_logits["sdpa", "none"][0],
                               atol=1e-5, rtol=1e-5)
    assert (attention_logits["sdpa", "padding_2d"][1] - attention_logits["sdpa", "none"][1]).abs().max() > 1e-2


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_no_mask_is_bidirectional_not_causal(model, implementation):
    ids = random_ids(1, L, seed=2)
    changed = ids.clone()
    changed[0, 30] = (changed[0, 30] + 1) % 125
    model.set_attn_implementation(implementation)
    try:
        before, after = logits_of(model, ids), logits_of(model, changed)
        full = logits_of(model, ids, attention_mask=torch.ones(1, 1, L, L, dtype=torch.bool))
    finally:
        model.set_attn_implementation("sdpa")
    # A later token changes the logits of an earlier position.
    assert (before[0, :30] - after[0, :30]).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(before, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_block_causal_mask_isolates_earlier_blocks(model, implementation):
    ids = random_ids(1, L, seed=3)
    changed = ids.clone()
    changed[0, 35] = (changed[0, 35] + 1) % 125  # in the third block (32..39)
    allowed = block_causal(1, L, 16)
    model.set_attn_implementation(implementation)
    try:
        before = logits_of(model, ids, attention_mask=allowed)
        after = logits_of(model, changed, attention_mask=allowed)
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(before[0, :32], after[0, :32], atol=1e-6, rtol=0)
    assert (before[0, 32:] - after[0, 32:]).abs().amax(-1).min() > 1e-4  # inside the block: bidirectional


@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(2, L - 1),  # 2-D, wrong length
        torch.ones(3, L),  # 2-D, wrong batch
        torch.ones(2, 1, L - 1, L, dtype=torch.bool),  # 4-D, wrong query length
        torch.ones(2, 1, L, L + 1, dtype=torch.bool),  # 4-D, wrong key length
        torch.ones(3, 1, L, L, dtype=torch.bool),  # 4-D, wrong batch
        torch.ones(2, L, L, dtype=torch.bool),  # 3-D
    ],
    ids=["2d_len", "2d_batch", "4d_query", "4d_key", "4d_batch", "3d"],
)
def test_wrong_mask_shapes_raise(model, mask):
    with pytest.raises(ValueError, match="attention_mask"):
        logits_of(model, random_ids(2, L), attention_mask=mask)


def test_forward_outputs(model):
    ids = random_ids(2, L, seed=4)
    allowed = block_causal(2, L, 16)
    with torch.no_grad():
        out = model(ids, attention_mask=allowed, output_hidden_states=True, output_router_logits=True)
        embeds = model.get_input_embeddings()(ids)
        from_embeds = model(inputs_embeds=embeds, attention_mask=allowed).logits
        kept = model(ids, attention_mask=allowed, logits_to_keep=16).logits
        picked = model(ids, attention_mask=allowed, logits_to_keep=torch.tensor([0, 7, 39])).logits
        as_tuple = model(ids, attention_mask=allowed, return_dict=False)
    config = model.config
    assert out.logits.shape == (2, L, config.vocab_size) and out.logits.dtype == torch.float32
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits)  # the last entry is after the norm
    n_moe = config.num_hidden_layers - config.first_k_dense_replace
    assert len(out.router_logits) == n_moe and out.router_logits[0].shape == (2 * L, config.num_experts)
    assert out.router_logits[0].dtype == torch.float32
    torch.testing.assert_close(from_embeds, out.logits)
    torch.testing.assert_close(kept, out.logits[:, -16:])
    torch.testing.assert_close(picked, out.logits[:, [0, 7, 39]])
    torch.testing.assert_close(as_tuple[0], out.logits)
    # Explicit default positions are the same as none.
    torch.testing.assert_close(logits_of(model, ids, attention_mask=allowed, position_ids=torch.arange(L)), out.logits)
    with pytest.raises(ValueError, match="input_ids"):
        model(input_ids=ids, inputs_embeds=embeds)


def test_positions_matter(model):
    # RoPE: shifting every position changes nothing (relative), permuting them does.
    ids = random_ids(1, L, seed=5)
    allowed = block_causal(1, L, 16)
    base = logits_of(model, ids, attention_mask=allowed)
    shifted = logits_of(model, ids, attention_mask=allowed, position_ids=torch.arange(L)[None] + 100)
    torch.testing.assert_close(shifted, base, atol=2e-4, rtol=1e-4)
    reversed_positions = logits_of(model, ids, attention_mask=allowed, position_ids=torch.arange(L).flip(0)[None])
    assert (reversed_positions - base).abs().max() > 1e-2


@pytest.mark.parametrize("use_qk_norm", [True, False])
def test_project_queries_are_what_forward_attends_with(monkeypatch, use_qk_norm):
    # SPRINT's probe scores attention with `project_queries`; it is only right if forward uses the same queries.
    from transformers_llada_uni import modeling_llada2_moe

    model = make_model(use_qk_norm=use_qk_norm)
    model.set_attn_implementation("eager")
    seen = []

    def recording(module, query, *args, **kwargs):
        seen.append(query)
        return eager(module, query, *args, **kwargs)

    eager = modeling_llada2_moe.eager_attention_forward
    monkeypatch.setattr(modeling_llada2_moe, "eager_attention_forward", recording)
    attention = model.model.layers[1].attention
    hidden = torch.randn(2, 12, model.config.hidden_size, generator=torch.Generator().manual_seed(6))
    positions = model.model.rotary_emb(hidden, torch.arange(12)[None].expand(2, -1) + 3)
    with torch.no_grad():
        attention(hidden, positions)
        queries = attention.project_queries(hidden, positions)
    assert queries.shape == (2, model.config.num_attention_heads, 12, model.config.head_dim)
    assert torch.equal(queries, seen[0])


# --------------------------------------------------------------------------------------------------------------------
# MoE
# --------------------------------------------------------------------------------------------------------------------


def naive_moe(block: LLaDA2MoeSparseMoeBlock, config, x):
    """Per-token MoE from the spec (original-system.md §4.5): returns (output, chosen experts, combine weights)."""
    gate = block.gate
    per_group = config.num_experts // config.n_group
    outputs, chosen_all, weights_all = [], [], []
    for token in x.float():
        scores = torch.sigmoid(gate.weight.float() @ token)
        biased = scores + gate.expert_bias.float()
        group_scores = [sorted(biased[g * per_group : (g + 1) * per_group].tolist(), reverse=True)[:2]
                        for g in range(config.n_group)]
        group_scores = torch.tensor([sum(s) for s in group_scores])
        kept_groups = set(group_scores.argsort(descending=True)[: config.topk_group].tolist())
        candidates = [e for e in range(config.num_experts) if e // per_group in kept_groups]
        candidates.sort(key=lambda e: -biased[e].item())
        chosen = candidates[: config.num_experts_per_tok]
        weights = scores[chosen]
        weights = weights / (weights.sum() + 1e-20) * config.routed_scaling_factor
        out = torch.zeros(config.hidden_size)
        for e, w in zip(chosen, weights):
            gate_up = block.experts.gate_up_proj[e].float()
            g, u = (gate_up @ token).chunk(2)
            out += w * (block.experts.down_proj[e].float() @ (F.silu(g) * u))
        shared = block.shared_experts
        out += shared.down_proj.weight @ (F.silu(shared.gate_proj.weight @ token) * (shared.up_proj.weight @ token))
        outputs.append(out)
        chosen_all.append(chosen)
        weights_all.append(weights)
    return torch.stack(outputs), torch.tensor(chosen_all), torch.stack(weights_all)


MOE_SHAPES = {
    "tiny": {},
    "more_experts": dict(num_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4, num_shared_experts=2),
    "one_group": dict(num_experts=8, n_group=1, topk_group=1, num_experts_per_tok=3),
}


@pytest.mark.parametrize("shape", list(MOE_SHAPES))
@pytest.mark.parametrize("backend", ["loop", "grouped_mm", "auto"])
def test_moe_block_matches_naive_reference(shape, backend):
    model = make_model(seed=1, **MOE_SHAPES[shape])
    model.set_experts_backend(backend)
    block = model.model.layers[1].mlp
    x = torch.randn(24, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, router_logits = block(x.view(2, 12, -1))
        topk_idx, topk_weights, _ = block.gate(x)
        expected, chosen, weights = naive_moe(block, model.config, x)
    torch.testing.assert_close(out.view(24, -1), expected, atol=1e-5, rtol=1e-5)
    # Selection in torch.topk order (descending biased score), weights aligned with it.
    assert torch.equal(topk_idx, chosen)
    torch.testing.assert_close(topk_weights, weights, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(router_logits, F.linear(x, block.gate.weight))


def test_expert_bias_steers_selection_but_not_weights():
    model = make_model(seed=2)
    block = model.model.layers[1].mlp
    config = model.config
    x = torch.randn(32, config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        block.gate.expert_bias.zero_()
        idx_unbiased, _, _ = block.gate(x)
        block.gate.expert_bias[[0, 5]] = 5.0  # experts 0 and 5 live in groups 0 and 2
        idx, weights, _ = block.gate(x)
        out, _ = block(x)
        expected, _, _ = naive_moe(block, config, x)
    assert (idx.sort(-1).values == torch.tensor([0, 5])).all()
    assert not (idx_unbiased.sort(-1).values == torch.tensor([0, 5])).all(-1).all()
    scores = torch.sigmoid(x @ block.gate.weight.T)
    unbiased = scores.gather(1, idx)
    torch.testing.assert_close(weights, unbiased / unbiased.sum(-1, keepdim=True) * config.routed_scaling_factor)
    torch.testing.assert_close(weights.sum(-1), torch.full((32,), config.routed_scaling_factor))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


class GroupedMMCounter:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = F.grouped_mm

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "grouped_mm", counted)


def test_expert_backends_agree_and_auto_picks_grouped_mm(model, monkeypatch):
    ids = random_ids(2, L, seed=6)
    allowed = block_causal(2, L, 16)
    counter = GroupedMMCounter(monkeypatch)
    logits = {}
    calls = {}
    try:
        for backend in ("loop", "grouped_mm", "auto"):
            model.set_experts_backend(backend)
            before = counter.calls
            logits[backend] = logits_of(model, ids, attention_mask=allowed)
            calls[backend] = counter.calls - before
    finally:
        model.set_experts_backend("auto")
    n_moe = model.config.num_hidden_layers - model.config.first_k_dense_replace
    assert calls == {"loop": 0, "grouped_mm": 2 * n_moe, "auto": 2 * n_moe}
    torch.testing.assert_close(logits["grouped_mm"], logits["loop"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits["auto"], logits["loop"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        model.set_experts_backend("eager")


def test_auto_backend_falls_back_to_loop(monkeypatch):
    counter = GroupedMMCounter(monkeypatch)
    # moe_intermediate_size 6: 24-byte fp32 rows break grouped_mm's 16-byte alignment.
    misaligned = make_model(seed=3, moe_intermediate_size=6)
    ids = random_ids(1, 20, seed=7)
    auto = logits_of(misaligned, ids)
    assert counter.calls == 0
    misaligned.set_experts_backend("loop")
    torch.testing.assert_close(auto, logits_of(misaligned, ids))
    # Under autograd auto takes grouped_mm where torch differentiates it (torch 2.13 does on CPU), else the loop.
    from transformers_llada_uni import modeling_llada2_moe as moe

    assert moe._grouped_mm_has_backward("cpu", torch.float32)  # probed (and cached) before counting
    aligned = make_model(seed=3)
    counter.calls = 0
    aligned(ids).logits.sum().backward()
    assert counter.calls > 0
    grouped_grad = aligned.model.layers[1].mlp.experts.gate_up_proj.grad.clone()
    monkeypatch.setitem(moe._GROUPED_MM_BACKWARD, ("cpu", torch.float32), False)
    aligned.zero_grad(set_to_none=True)
    counter.calls = 0
    aligned(ids).logits.sum().backward()
    assert counter.calls == 0
    torch.testing.assert_close(aligned.model.layers[1].mlp.experts.gate_up_proj.grad, grouped_grad,
                               atol=1e-5, rtol=1e-5)


def test_grouped_mm_backward_probe_says_no_when_torch_cannot(monkeypatch):
    from transformers_llada_uni import modeling_llada2_moe as moe

    original = F.grouped_mm

    def forward_only(rows, *args, **kwargs):
        if rows.requires_grad:
            raise RuntimeError("grouped_mm: no backward here")
        return original(rows, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grouped_mm", forward_only)
    monkeypatch.setattr(moe, "_GROUPED_MM_BACKWARD", {})
    assert not moe._grouped_mm_has_backward("cpu", torch.float32)
    model = make_model(seed=3)
    model(random_ids(1, 20, seed=7)).logits.sum().backward()  # the loop ran: no error
    assert model.model.layers[1].mlp.experts.down_proj.grad is not None


def test_grouped_mm_backward_probe_is_invisible_to_saved_tensor_hooks(monkeypatch):
    # Gradient checkpointing counts saved tensors through these hooks; the once-per-process probe must add none
    # (tests/test_gradient_checkpointing.py runs the real Trainer case).
    from transformers_llada_uni import modeling_llada2_moe as moe

    packed = []

    def pack(tensor):
        packed.append(tensor.shape)
        return tensor

    monkeypatch.setattr(moe, "_GROUPED_MM_BACKWARD", {})
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        assert moe._grouped_mm_has_backward("cpu", torch.float32)
    assert packed == []
    # Where saved-tensor hooks are disabled (torch.func transforms) the probe still answers, not a false "no".
    monkeypatch.setattr(moe, "_GROUPED_MM_BACKWARD", {})
    with torch.autograd.graph.disable_saved_tensors_hooks("no hooks here"):
        assert moe._grouped_mm_has_backward("cpu", torch.float32)


def test_experts_without_tokens_and_single_token():
    model = make_model(seed=4)
    experts = model.model.layers[1].mlp.experts
    x = torch.randn(1, model.config.hidden_size)
    idx, weights = torch.tensor([[3, 6]]), torch.tensor([[0.7, 1.8]])
    expected = sum(
        w * (experts.down_proj[e] @ (F.silu((experts.gate_up_proj[e] @ x[0]).chunk(2)[0])
                                     * (experts.gate_up_proj[e] @ x[0]).chunk(2)[1]))
        for e, w in zip(idx[0].tolist(), weights[0].tolist())
    )
    for backend in ("loop", "grouped_mm"):
        experts.backend = backend
        with torch.no_grad():
            out = experts(x, idx, weights)
        torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
    assert isinstance(experts, LLaDA2MoeExperts)


# --------------------------------------------------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------------------------------------------------


def test_bf16_forward_close_to_fp32():
    fp32 = make_model(seed=5, init=0.05)
    bf16 = make_model(seed=5, init=0.05).to(torch.bfloat16)
    ids = random_ids(2, L, seed=8)
    allowed = block_causal(2, L, 16)
    reference = logits_of(fp32, ids, attention_mask=allowed)
    for backend in ("auto", "loop"):
        bf16.set_experts_backend(backend)
        with torch.no_grad():
            out = bf16(ids, attention_mask=allowed, output_router_logits=True)
        assert out.logits.dtype == torch.float32 and out.router_logits[0].dtype == torch.float32
        assert torch.isfinite(out.logits).all()
        error = (out.logits - reference).abs()
        assert error.mean() < 0.02 * reference.abs().mean()
        agreement = (out.logits.argmax(-1) == reference.argmax(-1)).float().mean()
        assert agreement > 0.9
    # A bool block mask also works in bf16 with eager attention (converted to a bf16 additive mask).
    bf16.set_attn_implementation("eager")
    eager = logits_of(bf16, ids, attention_mask=allowed)
    assert (eager - reference).abs().mean() < 0.02 * reference.abs().mean()


def test_expert_bias_stays_fp32_when_loading_in_bf16(tmp_path):
    model = make_model(seed=6)
    model.save_pretrained(tmp_path)
    loaded = LLaDA2MoeForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.layers[1].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    for layer, original in zip(loaded.model.layers[1:], model.model.layers[1:]):
        assert layer.mlp.gate.expert_bias.dtype == torch.float32
        assert torch.equal(layer.mlp.gate.expert_bias, original.mlp.gate.expert_bias)
    assert torch.isfinite(logits_of(loaded, random_ids(1, 20))).all()


# --------------------------------------------------------------------------------------------------------------------
# Training plumbing
# --------------------------------------------------------------------------------------------------------------------


def _masked_batch(seed=9):
    ids = random_ids(2, L, seed=seed)
    labels = torch.full_like(ids, -100)
    noisy = ids.clone()
    masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) < 0.4
    noisy[masked] = 127
    labels[masked] = ids[masked]
    return noisy, labels


def test_labels_give_masked_cross_entropy(model):
    noisy, labels = _masked_batch()
    allowed = block_causal(2, L, 16)
    with torch.no_grad():
        out = model(noisy, attention_mask=allowed, labels=labels, objective="cross_entropy")
    keep = labels != -100
    expected = F.cross_entropy(out.logits[keep], labels[keep])  # unshifted: position i predicts token i
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="labels"):
        model(noisy, labels=labels[:, 1:], objective="cross_entropy")


def _grads(model, noisy, labels):
    model.zero_grad(set_to_none=True)
    loss = model(noisy, attention_mask=block_causal(2, L, 16), labels=labels, objective="cross_entropy").loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5.2x renames it activation_checkpointing
def test_backward_and_gradient_checkpointing():
    model = make_model(seed=7).train()
    noisy, labels = _masked_batch()
    loss, grads = _grads(model, noisy, labels)
    experts = "model.layers.1.mlp.experts."
    for name in ("gate_up_proj", "down_proj"):
        assert grads[experts + name].abs().sum() > 0
    assert grads["model.layers.1.mlp.gate.weight"].abs().sum() > 0  # combine weights are differentiable
    assert "model.layers.1.mlp.gate.expert_bias" not in grads  # a buffer, steered by the trainer
    assert set(grads) == {n for n, _ in model.named_parameters()}
    # Forcing the grouped GEMM under autograd gives the same gradients (torch 2.13 has its CPU backward).
    model.set_experts_backend("grouped_mm")
    try:
        loss_grouped, grads_grouped = _grads(model, noisy, labels)
    finally:
        model.set_experts_backend("auto")
    torch.testing.assert_close(loss_grouped, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_grouped[name], grad, atol=1e-6, rtol=1e-5, msg=name)

    calls = []
    # Module hooks on the layer stay outside the checkpoint; a submodule's hook sees the recompute.
    hook = model.model.layers[1].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    model.gradient_checkpointing_enable()
    try:
        # transformers renamed the flag (the old name warns from 5.2x on); read whichever this version has
        flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else (
            "is_gradient_checkpointing")
        assert getattr(model, flag)
        loss_ckpt, grads_ckpt = _grads(model, noisy, labels)
    finally:
        hook.remove()
        model.gradient_checkpointing_disable()
    assert len(calls) == 2  # the layer ran again in backward
    torch.testing.assert_close(loss_ckpt, loss)
    assert set(grads_ckpt) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-5, msg=name)


# Weights loaded from safetensors sit at other (mmap) alignments, which can move fp32 BLAS results by ~1 ulp.
def exact(a, b):
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path, model):
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "configuration_llada2_uni.py", "modeling_llada2_moe.py",
            "generation_llada2_uni.py"} <= files
    ids = random_ids(2, L, seed=10)
    allowed = block_causal(2, L, 16)
    expected = logits_of(model, ids, attention_mask=allowed)
    loaded = LLaDA2MoeForCausalLM.from_pretrained(tmp_path).eval()
    exact(logits_of(loaded, ids, attention_mask=allowed), expected)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    for layer, original in zip(loaded.model.layers[1:], model.model.layers[1:]):
        assert torch.equal(layer.mlp.gate.expert_bias, original.mlp.gate.expert_bias)
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(auto, LLaDA2MoeForCausalLM)
    exact(logits_of(auto, ids, attention_mask=allowed), expected)


def test_device_map_auto_on_cpu(tmp_path, model):
    from accelerate import infer_auto_device_map

    assert LLaDA2MoeForCausalLM._no_split_modules == ["LLaDA2MoeDecoderLayer"]
    model.save_pretrained(tmp_path)
    loaded = LLaDA2MoeForCausalLM.from_pretrained(tmp_path, device_map="auto").eval()
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    ids = random_ids(1, 24, seed=11)
    exact(logits_of(loaded, ids), logits_of(model, ids))
    # When memory is short, accelerate splits between whole decoder layers, never inside one.
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[1].parameters())
    device_map = infer_auto_device_map(model, max_memory={"cpu": 2 * layer_bytes},
                                       no_split_module_classes=model._no_split_modules)
    assert set(device_map.values()) >= {"cpu", "disk"}
    for key in device_map:
        parts = key.split(".")
        assert not (len(parts) > 3 and parts[:2] == ["model", "layers"]), key
