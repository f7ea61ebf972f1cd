"""Load and save the parts of a converted LLaDA2.0-Uni folder (layout in `hub_layout.py`) one component at a time.

Both pipelines go through `ComponentSource`, so a pipeline can also be built without loading anything and fetch each
stage from disk only while it runs (`stage_loading=True`): peak memory is then the largest single stage.
"""

from pathlib import Path
from typing import Optional

import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel

from .hub_layout import DECODERS, LIBRARIES, SCHEDULER_SETTINGS, SUBFOLDERS, read_subfolders, write_model_index
from .scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler
from .semantic_embedder import LLaDA2UniSemanticEmbedder

_MODEL_CLASSES = {
    "semantic_embedder": LLaDA2UniSemanticEmbedder,
    "transformer": ZImageTransformer2DModel,
    "transformer_turbo": ZImageTransformer2DModel,
    "vae": AutoencoderKL,
}
_SCHEDULER_KIND = {scheduler: decoder for decoder, (_, scheduler) in DECODERS.items()}


class ComponentSource:
    """Reads pipeline components from a converted folder.

    Args:
        folder: the converted root (transformers model at the root, pixel parts in subfolders).
        dtype: dtype for every model component (`None`: as stored).
        model_kwargs: extra `from_pretrained` arguments for the transformers model (e.g. `attn_implementation`).
    """

    def __init__(self, folder, dtype: Optional[torch.dtype] = None, model_kwargs: Optional[dict] = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"`pretrained_model_name_or_path` {str(folder)!r} is not a folder (a converted "
                             "LLaDA2.0-Uni checkpoint; see docs/conversion.md).")
        self.dtype = dtype
        self.model_kwargs = dict(model_kwargs or {})
        self.subfolders = read_subfolders(self.folder)

    def path(self, name: str) -> Path:
        return self.folder / self.subfolders[name]

    def has(self, name: str) -> bool:
        if name in _SCHEDULER_KIND:
            return True  # absent scheduler configs fall back to the decoder's default sampler
        if name == "processor":
            return (self.folder / "tokenizer_config.json").is_file() or (self.folder / "tokenizer.json").is_file()
        return (self.path(name) / "config.json").is_file()

    def require(self, name: str, what: str):
        if not self.has(name):
            raise ValueError(f"{self.folder} has no {what} (expected {self.path(name)}/config.json); convert the "
                             "full original snapshot with conversion/convert_llada2_uni_to_hf.py.")

    def load(self, name: str):
        dtype_kwargs = {"dtype": self.dtype} if self.dtype is not None else {}
        if name in _SCHEDULER_KIND:
            if (self.path(name) / LLaDA2UniFlowMatchEulerScheduler.config_name).is_file():
                return LLaDA2UniFlowMatchEulerScheduler.from_pretrained(self.folder, subfolder=self.subfolders[name])
            return LLaDA2UniFlowMatchEulerScheduler(**SCHEDULER_SETTINGS[_SCHEDULER_KIND[name]])
        if name in _MODEL_CLASSES:
            subfolder = self.subfolders[name]
            return _MODEL_CLASSES[name].from_pretrained(self.folder, subfolder=subfolder, **dtype_kwargs).eval()
        if name == "mllm":
            from transformers_llada_uni import LLaDA2UniForConditionalGeneration

            kwargs = {**dtype_kwargs, **self.model_kwargs}
            return LLaDA2UniForConditionalGeneration.from_pretrained(self.path(name), **kwargs).eval()
        if name == "processor":
            from transformers_llada_uni import LLaDA2UniProcessor

            return LLaDA2UniProcessor.from_pretrained(self.path(name))
        raise ValueError(f"unknown component {name!r}")


def decoder_component_names(decoders) -> list:
    names = ["semantic_embedder", "vae"]
    for decoder in decoders:
        names += list(DECODERS[decoder])
    return names


def save_components(components: dict, folder, pipeline_class: str) -> Path:
    """Write every non-None component into its subfolder of `folder` and the model_index.json listing them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    present = []
    for name, component in components.items():
        if component is None:
            continue
        if name not in LIBRARIES:
            raise ValueError(f"cannot save the unknown component {name!r}")
        component.save_pretrained(folder / SUBFOLDERS[name])
        present.append(name)
    write_model_index(folder, present, pipeline_class)
    return folder


__all__ = ["ComponentSource", "decoder_component_names", "save_components"]
