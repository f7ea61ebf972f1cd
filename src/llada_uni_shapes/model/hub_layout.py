"""The one table of a converted LLaDA2.0-Uni folder (= one Hub repo), which loading, conversion, export, the shipped
shapes model and both pipelines' `save_pretrained` all read.

The root is the transformers model (config.json + remote code, weights, tokenizer, processor, generation config) and
also the diffusers pipeline: `model_index.json` names `pipeline_llada2_uni.LLaDA2UniPipeline` (a `.py` at the root),
so `DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)` and `AutoModel.from_pretrained(repo,
trust_remote_code=True)` read the same folder, each weight stored once. diffusers loads a component from the folder of
its name: the pixel parts live there; `mllm/` and `processor/` hold only a small loader file that reads the root.
Folders written by earlier releases of this project (`decoder/`, `decoder_turbo/`, a `_subfolders` key) still load.
"""

import json
from pathlib import Path
from typing import Optional

import diffusers

from .scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler

MODEL_INDEX = "model_index.json"
PIPELINE_MODULE = "pipeline_llada2_uni"  # the root .py file diffusers imports (`_class_name`)
LOADER_MODULE = "llada2_uni_loaders"  # the loader file in mllm/ and processor/
# pipeline component -> folder (relative to the root) its config and weights live in.
SUBFOLDERS = {
    "mllm": ".",
    "processor": ".",
    "semantic_embedder": "semantic_embedder",
    "transformer": "transformer",
    "transformer_turbo": "transformer_turbo",
    "vae": "vae",
    "scheduler": "scheduler",
    "scheduler_turbo": "scheduler_turbo",
}
# Folders of earlier releases of this project, read when the new one is absent.
LEGACY_SUBFOLDERS = {"transformer": "decoder", "transformer_turbo": "decoder_turbo"}
# pipeline component -> (module, class) in model_index.json. A module that is not a library is a file of that name in
# the component's folder (diffusers' custom components); `CODE_FILES` says which package file it is a copy of.
LIBRARIES = {
    "mllm": (LOADER_MODULE, "LLaDA2UniModelLoader"),
    "processor": (LOADER_MODULE, "LLaDA2UniProcessorLoader"),
    "semantic_embedder": ("semantic_embedder", "LLaDA2UniSemanticEmbedder"),
    "transformer": ("diffusers", "ZImageTransformer2DModel"),
    "transformer_turbo": ("diffusers", "ZImageTransformer2DModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "scheduler": ("scheduling_llada2_uni", "LLaDA2UniFlowMatchEulerScheduler"),
    "scheduler_turbo": ("scheduling_llada2_uni", "LLaDA2UniFlowMatchEulerScheduler"),
}
CODE_FILES = {name: f"{module}.py" for name, (module, _) in LIBRARIES.items() if module != "diffusers"}
# The diffusers side's files written at the root: the pipeline and every module it imports (for a local folder
# diffusers copies only the files the pipeline imports directly, so it imports them all).
ROOT_CODE_FILES = ("pipeline_llada2_uni.py", "pipeline_llada2_uni_decoder.py", "hub_layout.py", "loading.py",
                   "semantic_embedder.py", "scheduling_llada2_uni.py", "llada2_uni_loaders.py", "hub_files.py",
                   "model_card.py")
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
    """The model_index.json content for the components named in `present` (the others are recorded as absent).
    The full pipeline names its root file, so diffusers imports it (trust_remote_code)."""
    class_name = [PIPELINE_MODULE, pipeline_class] if pipeline_class == "LLaDA2UniPipeline" else pipeline_class
    index = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    for name, library in LIBRARIES.items():
        index[name] = list(library) if name in present else [None, None]
    return index


def write_model_index(folder, present, pipeline_class: str = "LLaDA2UniPipeline") -> Path:
    path = Path(folder) / MODEL_INDEX
    text = json.dumps(model_index(present, pipeline_class), indent=2, sort_keys=True) + "\n"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)  # never a half-written index
    return path


def read_subfolders(folder) -> dict:
    """Component -> folder: the default layout, with the folders of earlier releases where only those exist (or
    where an old model_index.json names them)."""
    folder = Path(folder)
    subfolders = dict(SUBFOLDERS)
    for name, old in LEGACY_SUBFOLDERS.items():
        if not (folder / subfolders[name]).is_dir() and (folder / old).is_dir():
            subfolders[name] = old
    path = folder / MODEL_INDEX
    if path.is_file():
        subfolders.update(json.loads(path.read_text()).get("_subfolders", {}))
    return subfolders


def component_path(folder, name: str, subfolders: Optional[dict] = None) -> Path:
    subfolders = subfolders if subfolders is not None else read_subfolders(folder)
    return Path(folder) / subfolders[name]


__all__ = [
    "CODE_FILES",
    "DECODERS",
    "LEGACY_SUBFOLDERS",
    "LOADER_MODULE",
    "PIPELINE_MODULE",
    "ROOT_CODE_FILES",
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
