"""LLaDA2.0-Uni pixel side for diffusers: the SigVQ embedder, the decoder sampler and the pipelines.

Built on `transformers_llada_uni` (imported, never the reverse). The classes are imported on first use (PEP 562), so
that `llada-uni --help`, `--version` and usage errors answer without importing torch, and a Ctrl-C during those
imports reaches the command's own handler (one line, exit 130) instead of a traceback."""

import importlib

_EXPORTS = {
    "LLaDA2UniDecoderPipeline": ".pipeline_llada2_uni_decoder",
    "LLaDA2UniFlowMatchEulerScheduler": ".scheduling_llada2_uni",
    "LLaDA2UniPipeline": ".pipeline_llada2_uni",
    "LLaDA2UniPipelineOutput": ".pipeline_llada2_uni",
    "LLaDA2UniSchedulerOutput": ".scheduling_llada2_uni",
    "LLaDA2UniSemanticEmbedder": ".semantic_embedder",
}

__all__ = [
    "LLaDA2UniDecoderPipeline",
    "LLaDA2UniFlowMatchEulerScheduler",
    "LLaDA2UniPipeline",
    "LLaDA2UniPipelineOutput",
    "LLaDA2UniSchedulerOutput",
    "LLaDA2UniSemanticEmbedder",
]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
