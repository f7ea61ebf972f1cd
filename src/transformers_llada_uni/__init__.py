"""LLaDA2 / LLaDA2.0-Uni for transformers.

Importing this package registers the classes with the transformers Auto classes; the files of this folder are also
the remote-code bundle written next to saved checkpoints, so they import only torch, transformers and each other.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_llada2_uni import LLaDA2MoeConfig, LLaDA2UniConfig
from .data_collator_llada2_uni import LLaDA2UniDataCollator
from .generation_llada2_uni import (
    BlockDiffusionCache,
    LLaDA2GenerateOutput,
    LLaDA2GenerationConfig,
    LLaDA2MoeGenerationMixin,
)
from .image_processing_llada2_uni import LLaDA2UniImageProcessor
from .modeling_llada2_moe import LLaDA2MoeForCausalLM, LLaDA2MoeModel, LLaDA2MoeModelLM, LLaDA2MoePreTrainedModel
from .modeling_llada2_uni import LLaDA2UniForConditionalGeneration
from .peft_llada2_uni import get_lora_model, lora_config
from .processing_llada2_uni import LLaDA2UniProcessor
from .training_llada2_uni import DiffusionTrainingArguments

AutoConfig.register(LLaDA2MoeConfig.model_type, LLaDA2MoeConfig, exist_ok=True)
AutoModel.register(LLaDA2MoeConfig, LLaDA2MoeForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeForCausalLM, exist_ok=True)
AutoConfig.register(LLaDA2UniConfig.model_type, LLaDA2UniConfig, exist_ok=True)
for _auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
    _auto.register(LLaDA2UniConfig, LLaDA2UniForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(LLaDA2UniConfig, slow_image_processor_class=LLaDA2UniImageProcessor, exist_ok=True)
AutoProcessor.register(LLaDA2UniConfig, LLaDA2UniProcessor, exist_ok=True)
# save_pretrained copies these files and writes `auto_map`, so the folder loads with trust_remote_code alone.
LLaDA2MoeConfig.register_for_auto_class()
LLaDA2MoeForCausalLM.register_for_auto_class("AutoModelForCausalLM")
LLaDA2UniConfig.register_for_auto_class()
LLaDA2UniForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")
LLaDA2UniImageProcessor.register_for_auto_class("AutoImageProcessor")
LLaDA2UniProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "BlockDiffusionCache",
    "DiffusionTrainingArguments",
    "LLaDA2GenerateOutput",
    "LLaDA2GenerationConfig",
    "LLaDA2MoeConfig",
    "LLaDA2MoeForCausalLM",
    "LLaDA2MoeGenerationMixin",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2MoePreTrainedModel",
    "LLaDA2UniConfig",
    "LLaDA2UniDataCollator",
    "LLaDA2UniForConditionalGeneration",
    "LLaDA2UniImageProcessor",
    "LLaDA2UniProcessor",
    "get_lora_model",
    "lora_config",
]
