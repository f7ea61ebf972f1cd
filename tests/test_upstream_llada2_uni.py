"""transformers' ModelTesterMixin and ConfigTester on LLaDA2UniForConditionalGeneration (backbone + SigLIP-VQ image
tokenizer), as an upstream VLM test would run them; suites from the installed release (upstream_suites.py), opt-outs
in upstream_opt_outs.py."""

import unittest

import torch

import upstream_opt_outs
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2UniConfig, LLaDA2UniForConditionalGeneration
from upstream_suites import add_config_tests, register_as_native, suite

(ModelTesterMixin,) = suite("test_modeling_common", "ModelTesterMixin")
(ConfigTester,) = suite("test_configuration_common", "ConfigTester")

# Vocabulary: text ids below OFFSET, then the CODEBOOK image codes.
OFFSET, CODEBOOK = 80, 16
SOI, EOI, BOI, UNCOND, RESERVED = 70, 71, 72, 73, 40
GRID = (2, 2)  # token grid of the one image each sample carries
PATCH = 4


class LLaDA2UniModelTester:
    def __init__(self, parent, batch_size=2, text_length=5, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.text_length = text_length
        self.seq_length = text_length + 1 + GRID[0] * GRID[1]  # text, <boi>, one placeholder per image token
        self.is_training = is_training
        self.vocab_size = OFFSET + CODEBOOK
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4

    def get_config(self) -> LLaDA2UniConfig:
        text = LLaDA2MoeConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=37, moe_intermediate_size=16,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=2, head_dim=8, first_k_dense_replace=1, num_experts=4, num_experts_per_tok=2,
            num_shared_experts=1, n_group=2, topk_group=1, max_position_embeddings=64, mask_token_id=79,
            eos_token_id=78, pad_token_id=0, bos_token_id=1, block_length=4, image_token_offset=OFFSET,
        )
        return LLaDA2UniConfig(
            text_config=text,
            vision_config=dict(hidden_size=16, intermediate_size=32, num_heads=2, depth=1, patch_size=PATCH,
                               image_size=4 * PATCH),
            vq_config=dict(num_embeddings=CODEBOOK, embed_dim=8, latent_channels=16),
            image_start_token_id=SOI, image_end_token_id=EOI, boi_token_id=BOI, uncondition_token_id=UNCOND,
            reserved_token_start_id=RESERVED, num_reserved_tokens=8,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        # Text ids below the special ones, then `<boi>` and the placeholders the processor leaves for image codes.
        text = torch.randint(2, RESERVED, (self.batch_size, self.text_length))
        placeholders = torch.tensor([BOI] + [SOI] * (GRID[0] * GRID[1])).expand(self.batch_size, -1)
        input_ids = torch.cat([text, placeholders], dim=1)
        attention_mask = torch.ones_like(input_ids)
        patches = self.batch_size * GRID[0] * GRID[1]
        pixel_values = torch.rand(patches, 3 * PATCH * PATCH) * 2 - 1  # packed patches, as the image processor gives
        image_grid_thw = torch.tensor([[1, *GRID]] * self.batch_size)
        return config, {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                        "image_grid_thw": image_grid_thw}


class LLaDA2UniModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LLaDA2UniForConditionalGeneration,)
    _is_composite = True
    # Router weights that never receive a token in a tiny batch get no gradient; upstream MoE testers say the same.
    test_all_params_have_gradient = False

    def setUp(self):
        register_as_native(self, "llada2_uni", MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES="LLaDA2UniForConditionalGeneration")
        self.model_tester = LLaDA2UniModelTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # Labels mark the supervised clean tokens (here all of them); the model writes the image codes into them.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            inputs_dict["labels"] = inputs_dict["input_ids"].clone()
            # The objective draws its masks at random; a fresh generator per call makes two calls draw the same ones.
            inputs_dict["generator"] = torch.Generator().manual_seed(0)
        return inputs_dict


add_config_tests(LLaDA2UniModelTest, lambda test: ConfigTester(test, config_class=LLaDA2UniConfig,
                                                               has_text_modality=False))
upstream_opt_outs.apply(LLaDA2UniModelTest, "llada2_uni")
