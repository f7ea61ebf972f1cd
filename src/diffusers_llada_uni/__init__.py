"""LLaDA2.0-Uni pixel side for diffusers: the SigVQ embedder, the decoder sampler and the pipelines.

Built on `transformers_llada_uni` (imported, never the reverse)."""

from .pipeline_llada2_uni import LLaDA2UniPipeline, LLaDA2UniPipelineOutput
from .pipeline_llada2_uni_decoder import LLaDA2UniDecoderPipeline
from .scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler, LLaDA2UniSchedulerOutput
from .semantic_embedder import LLaDA2UniSemanticEmbedder

__all__ = [
    "LLaDA2UniDecoderPipeline",
    "LLaDA2UniFlowMatchEulerScheduler",
    "LLaDA2UniPipeline",
    "LLaDA2UniPipelineOutput",
    "LLaDA2UniSchedulerOutput",
    "LLaDA2UniSemanticEmbedder",
]
