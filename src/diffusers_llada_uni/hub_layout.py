"""Where each part of a converted LLaDA2.0-Uni folder lives, and the `model_index.json` that lists them.

The root is the transformers model (and its processor); the pixel side sits beside it in subfolders that mirror the
original release. Both pipelines load from, and save to, this one layout, so no weight is ever stored twice.
Conversion writes, and export reads, the same subfolders through `SUBFOLDERS`: a folder is renamed here and nowhere
else (where the original release keeps each part is `conversion/original_layout.py`'s `ORIGINAL_PIXEL_PATHS`).
"""

import json
from pathlib import Path
from typing import Optional

import diffusers

from .scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler

MODEL_INDEX = "model_index.json"
# pipeline component -> folder (relative to the root) it is saved in.
SUBFOLDERS = {
    "mllm": ".",
    "processor": ".",
    "semantic_embedder": "semantic_embedder",
    "transformer": "decoder",
    "transformer_turbo": "decoder_turbo",
    "vae": "vae",
    "scheduler": "scheduler",
    "scheduler_turbo": "scheduler_turbo",
}
# pipeline component -> (library, class) as diffusers writes it in model_index.json.
LIBRARIES = {
    "mllm": ("transformers_llada_uni", "LLaDA2UniForConditionalGeneration"),
    "processor": ("transformers_llada_uni", "LLaDA2UniProcessor"),
    "semantic_embedder": ("diffusers_llada_uni", "LLaDA2UniSemanticEmbedder"),
    "transformer": ("diffusers", "ZImageTransformer2DModel"),
    "transformer_turbo": ("diffusers", "ZImageTransformer2DModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "scheduler": ("diffusers_llada_uni", "LLaDA2UniFlowMatchEulerScheduler"),
    "scheduler_turbo": ("diffusers_llada_uni", "LLaDA2UniFlowMatchEulerScheduler"),
}
# decoder name -> (transformer component, scheduler component).
DECODERS = {"normal": ("transformer", "scheduler"), "turbo": ("transformer_turbo", "scheduler_turbo")}
# The original's defaults: normal = 50 grid points (49 model calls) with CFG 1.0 in the form p + 1.0 * (p - n), which
# is guidance_scale 2.0 in the form n + g * (p - n); turbo = 8 calls without CFG.
DECODER_DEFAULTS = {
    "normal": {"num_inference_steps": 49, "guidance_scale": 2.0},
    "turbo": {"num_inference_steps": 8, "guidance_scale": 1.0},
}
SCHEDULER_SETTINGS = {
    "normal": {"shift_factor": 6.0, "stochastic_ratio": 0.0},
    "turbo": {"shift_factor": 1.0, "stochastic_ratio": 1.0},
}


def check_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"`decoder` must be one of {', '.join(map(repr, DECODERS))}; got {decoder!r}.")
    return decoder


def default_scheduler(decoder: str) -> LLaDA2UniFlowMatchEulerScheduler:
    return LLaDA2UniFlowMatchEulerScheduler(**SCHEDULER_SETTINGS[check_decoder(decoder)])


def model_index(present, pipeline_class: str = "LLaDA2UniPipeline") -> dict:
    """The model_index.json content for the components named in `present` (the others are recorded as absent)."""
    index = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__,
             "_subfolders": dict(SUBFOLDERS)}
    for name, library in LIBRARIES.items():
        index[name] = list(library) if name in present else [None, None]
    return index


def write_model_index(folder, present, pipeline_class: str = "LLaDA2UniPipeline") -> Path:
    path = Path(folder) / MODEL_INDEX
    path.write_text(json.dumps(model_index(present, pipeline_class), indent=2, sort_keys=True) + "\n")
    return path


def read_subfolders(folder) -> dict:
    """Component -> folder, from model_index.json when the folder has one (else the default layout)."""
    path = Path(folder) / MODEL_INDEX
    subfolders = dict(SUBFOLDERS)
    if path.is_file():
        subfolders.update(json.loads(path.read_text()).get("_subfolders", {}))
    return subfolders


def component_path(folder, name: str, subfolders: Optional[dict] = None) -> Path:
    subfolders = subfolders if subfolders is not None else read_subfolders(folder)
    return Path(folder) / subfolders[name]


__all__ = [
    "DECODERS",
    "DECODER_DEFAULTS",
    "LIBRARIES",
    "MODEL_INDEX",
    "SCHEDULER_SETTINGS",
    "SUBFOLDERS",
    "check_decoder",
    "component_path",
    "default_scheduler",
    "model_index",
    "read_subfolders",
    "write_model_index",
]
