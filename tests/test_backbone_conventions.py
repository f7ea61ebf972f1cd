"""transformers 5 conventions of the backbone: RoPE settings read from `rope_parameters` when a model is built (and
refused clearly when impossible), outputs recorded only when asked, `can_generate` for a real reason, composite config
defaults."""

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from conftest import tiny_config_kwargs
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM, LLaDA2MoeModel, LLaDA2UniConfig


def tiny(**overrides):
    return LLaDA2MoeConfig(**tiny_config_kwargs(**overrides))


def test_rope_edits_after_init_are_what_the_model_uses():
    edited = tiny()
    edited.rope_parameters["rope_theta"] = 10_000.0  # transformers' way of setting RoPE
    direct = tiny(rope_parameters={"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5})
    torch.testing.assert_close(LLaDA2MoeModel(edited).rotary_emb.inv_freq, LLaDA2MoeModel(direct).rotary_emb.inv_freq)
    assert not torch.equal(LLaDA2MoeModel(edited).rotary_emb.inv_freq, LLaDA2MoeModel(tiny()).rotary_emb.inv_freq)
    legacy = tiny()
    legacy.rope_theta = 10_000.0  # the legacy name writes the same dict
    assert legacy.rope_parameters["rope_theta"] == 10_000.0
    torch.testing.assert_close(LLaDA2MoeModel(legacy).rotary_emb.inv_freq, LLaDA2MoeModel(direct).rotary_emb.inv_freq)


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 4.0},
                                  {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256}])
def test_scaled_rope_types_come_from_transformers(rope):
    config = tiny(rope_parameters={"rope_theta": 600000.0, "partial_rotary_factor": 0.5, **rope})
    module = LLaDA2MoeModel(config).rotary_emb
    expected, scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, None)
    assert module.inv_freq.shape == (config.rotary_dim // 2,)
    torch.testing.assert_close(module.inv_freq, expected)
    assert module.attention_scaling == scale
    x = torch.zeros(1)
    cos, _ = module(x, torch.arange(5)[None])
    torch.testing.assert_close(cos[0, 0], torch.full((config.rotary_dim,), scale))  # position 0: cos 1, scaled


def test_an_impossible_rope_set_after_init_is_refused_when_the_model_is_built():
    config = tiny()
    config.rope_parameters = {"rope_type": "spiral", "rope_theta": 1e4}
    with pytest.raises(ValueError, match="rope_type"):
        LLaDA2MoeModel(config)
    config.rope_parameters = {"rope_type": "linear", "rope_theta": 1e4}  # no factor
    with pytest.raises(ValueError, match="factor"):
        LLaDA2MoeModel(config)


def test_outputs_are_recorded_only_when_asked():
    torch.manual_seed(0)
    model = LLaDA2MoeForCausalLM(tiny()).eval()
    ids = torch.randint(0, 120, (1, 6))
    with torch.no_grad():
        plain = model(ids)
        assert plain.hidden_states is None and plain.attentions is None and plain.router_logits is None
        full = model(ids, output_hidden_states=True, output_router_logits=True)
        picked = model(ids, output_hidden_states=[1])
    layers = model.config.num_hidden_layers
    assert len(full.hidden_states) == layers + 1
    assert len(full.router_logits) == layers - model.config.first_k_dense_replace  # one per MoE layer
    assert full.router_logits[0].shape == (6, model.config.num_experts)
    assert [state is None for state in picked.hidden_states] == [i != 1 for i in range(layers + 1)]
    torch.testing.assert_close(picked.hidden_states[1], full.hidden_states[1])
    model.config.output_router_logits = True  # the config's setting counts when the call says nothing
    with torch.no_grad():
        assert len(model(ids).router_logits) == len(full.router_logits)


def test_can_generate_because_generate_is_defined():
    assert LLaDA2MoeForCausalLM.can_generate() and not LLaDA2MoeModel.can_generate()
    # not because of a base class's name: a subclass without the sampler cannot generate
    assert not type("NoSampler", (LLaDA2MoeForCausalLM,), {"generate": None}).can_generate()


def test_uni_config_builds_without_arguments():
    config = LLaDA2UniConfig()
    text = config.text_config
    assert (text.vocab_size, config.image_token_offset, config.codebook_size) == (173568, 157184, 16384)
    assert config.image_start_token_id == 156901 and text.mask_token_id == 156895
