"""transformers' ModelTesterMixin and ConfigTester on the LLaDA2 MoE backbone and its LM head, as an upstream model
test would run them (suites from the installed release, see upstream_suites.py; opt-outs in upstream_opt_outs.py)."""

import unittest

import torch

import upstream_opt_outs
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM, LLaDA2MoeModel
from upstream_suites import add_config_tests, register_as_native, suite

(ModelTesterMixin,) = suite("test_modeling_common", "ModelTesterMixin")
(ConfigTester,) = suite("test_configuration_common", "ConfigTester")


class LLaDA2MoeModelTester:
    """The smallest config that still has a dense layer, a MoE layer, grouped routing, GQA and partial RoPE."""

    def __init__(self, parent, batch_size=2, seq_length=7, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_key_value_heads = 2

    def get_config(self) -> LLaDA2MoeConfig:
        return LLaDA2MoeConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=37, moe_intermediate_size=16,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, head_dim=8, first_k_dense_replace=1, num_experts=4,
            num_experts_per_tok=2, num_shared_experts=1, n_group=2, topk_group=1, max_position_embeddings=64,
            mask_token_id=98, eos_token_id=97, pad_token_id=0, bos_token_id=1, block_length=4,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        # Any id may appear, the mask token included: nothing about the model may depend on which ids a batch holds.
        input_ids = torch.randint(0, self.vocab_size, (self.batch_size, self.seq_length))
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, -2:] = 0  # one padded row
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class LLaDA2MoeModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LLaDA2MoeModel, LLaDA2MoeForCausalLM)
    # Router weights that never receive a token in a tiny batch get no gradient; upstream MoE testers say the same.
    test_all_params_have_gradient = False

    def setUp(self):
        register_as_native(self, "llada2_moe", MODEL_MAPPING_NAMES="LLaDA2MoeModel",
                           MODEL_FOR_CAUSAL_LM_MAPPING_NAMES="LLaDA2MoeForCausalLM")
        self.model_tester = LLaDA2MoeModelTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # Our classes are not in transformers' task mappings, which is where the suite looks up the labels to add;
        # the LM head is trained on labels that mark the supervised clean tokens (docs/finetuning.md).
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is LLaDA2MoeForCausalLM:
            inputs_dict["labels"] = inputs_dict["input_ids"].masked_fill(inputs_dict["attention_mask"] == 0, -100)
            # The objective draws its masks at random; a fresh generator per call makes two calls draw the same ones.
            inputs_dict["generator"] = torch.Generator().manual_seed(0)
        return inputs_dict


add_config_tests(LLaDA2MoeModelTest, lambda test: ConfigTester(test, config_class=LLaDA2MoeConfig, hidden_size=64,
                                                               num_attention_heads=4))
upstream_opt_outs.apply(LLaDA2MoeModelTest, "llada2_moe")
