"""LLaDA2 / LLaDA2.0-Uni for transformers.

Importing this package registers the classes with the transformers Auto classes; the files of this folder are also
the remote-code bundle written next to saved checkpoints, so they import only torch, transformers and each other.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_llada2_uni import LLaDA2MoeConfig
from .generation_llada2_uni import (
    BlockDiffusionCache,
    LLaDA2GenerateOutput,
    LLaDA2GenerationConfig,
    LLaDA2MoeGenerationMixin,
)
from .modeling_llada2_moe import LLaDA2MoeForCausalLM, LLaDA2MoeModel, LLaDA2MoeModelLM, LLaDA2MoePreTrainedModel

AutoConfig.register(LLaDA2MoeConfig.model_type, LLaDA2MoeConfig, exist_ok=True)
AutoModel.register(LLaDA2MoeConfig, LLaDA2MoeForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeForCausalLM, exist_ok=True)
# save_pretrained copies these files and writes `auto_map`, so the folder loads with trust_remote_code alone.
LLaDA2MoeConfig.register_for_auto_class()
LLaDA2MoeForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "BlockDiffusionCache",
    "LLaDA2GenerateOutput",
    "LLaDA2GenerationConfig",
    "LLaDA2MoeConfig",
    "LLaDA2MoeForCausalLM",
    "LLaDA2MoeGenerationMixin",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2MoePreTrainedModel",
]
