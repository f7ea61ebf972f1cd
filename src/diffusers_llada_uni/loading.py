"""Load and save the parts of a converted LLaDA2.0-Uni folder or Hub repo (layout in `hub_layout.py`) one component
at a time.

Both pipelines go through `ComponentSource`, so a pipeline can also be built without loading anything and fetch each
stage from disk only while it runs (`stage_loading=True`): peak memory is then the largest single stage.
"""

import os
from pathlib import Path
from typing import Optional, Union

import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel

from .hub_files import staged_save, write_pipeline_files
from .hub_layout import DECODERS, LIBRARIES, SCHEDULER_SETTINGS, SUBFOLDERS, read_subfolders
from .llada2_uni_loaders import LLaDA2UniModelLoader, LLaDA2UniProcessorLoader
from .scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler
from .semantic_embedder import LLaDA2UniSemanticEmbedder

_MODEL_CLASSES = {
    "semantic_embedder": LLaDA2UniSemanticEmbedder,
    "transformer": ZImageTransformer2DModel,
    "transformer_turbo": ZImageTransformer2DModel,
    "vae": AutoencoderKL,
}
_SCHEDULER_KIND = {scheduler: decoder for decoder, (_, scheduler) in DECODERS.items()}
# Hub arguments of `from_pretrained` that say where a repo id's files come from.
HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download", "proxies")


def resolve_folder(name_or_path, **hub_kwargs) -> Path:
    """A local folder as it is; a Hub repo id (`org/name`) downloaded into (or, offline, found in) the Hugging Face
    cache. Anything else is a ValueError naming the argument."""
    if os.path.isdir(str(name_or_path)):
        return Path(name_or_path)
    text = str(name_or_path)
    parts = text.split("/")
    if len(parts) != 2 or not all(parts) or text.startswith((".", "/", "~")) or os.path.sep in text.replace("/", ""):
        raise ValueError(f"`pretrained_model_name_or_path` {text!r} is neither a folder nor a Hub repo id (a converted "
                         "LLaDA2.0-Uni checkpoint; see docs/conversion.md).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, **{k: v for k, v in hub_kwargs.items() if v is not None}))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError) as exc:
        where = " offline in the cache" if _offline(hub_kwargs) else ""
        raise ValueError(f"`pretrained_model_name_or_path` {text!r}: not a local folder, and the Hub repo could not "
                         f"be found{where} ({exc.__class__.__name__}).") from None


def _offline(hub_kwargs) -> bool:
    return bool(hub_kwargs.get("local_files_only")) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


class ComponentSource:
    """Reads pipeline components from a converted folder or Hub repo.

    Args:
        folder: the converted root (transformers model at the root, pixel parts in subfolders) or a repo id.
        dtype: dtype for every model component (`None`: as stored), or a dict {component: dtype} with an optional
            "default" entry (diffusers' convention).
        model_kwargs: extra `from_pretrained` arguments for the transformers model (e.g. `attn_implementation`).
        hub_kwargs: `revision`, `cache_dir`, `local_files_only`, `token`, ... for a repo id.
        device_map, variant: passed to every model's `from_pretrained`.
    """

    def __init__(self, folder, dtype: Union[torch.dtype, dict, None] = None, model_kwargs: Optional[dict] = None,
                 hub_kwargs: Optional[dict] = None, device_map=None, variant: Optional[str] = None):
        self.folder = resolve_folder(folder, **(hub_kwargs or {}))
        self.name_or_path = str(folder)
        if isinstance(dtype, dict):
            unknown = set(dtype) - set(SUBFOLDERS) - {"default"}
            if unknown:
                raise ValueError(f"`dtype` has unknown components {sorted(unknown)}; accepted: "
                                 f"{sorted(set(SUBFOLDERS) | {'default'})}.")
        elif dtype is not None and not isinstance(dtype, torch.dtype):
            raise ValueError(f"`dtype` must be a torch.dtype or a dict of them, got {dtype!r}.")
        self.dtype = dtype
        self.model_kwargs = dict(model_kwargs or {})
        self.device_map, self.variant = device_map, variant
        self.subfolders = read_subfolders(self.folder)

    @staticmethod
    def take_arguments(dtype, kwargs: dict) -> tuple:
        """(dtype, hub_kwargs) from a pipeline's `from_pretrained` arguments: `torch_dtype` (diffusers' name) is an
        alias of `dtype`; it and the Hub arguments are taken out of `kwargs`, the rest is left there."""
        if "torch_dtype" in kwargs:
            if dtype is not None:
                raise ValueError("give `dtype` or its alias `torch_dtype`, not both.")
            dtype = kwargs.pop("torch_dtype")
        return dtype, {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}

    def path(self, name: str) -> Path:
        return self.folder / self.subfolders[name]

    def dtype_of(self, name: str) -> Optional[torch.dtype]:
        if isinstance(self.dtype, dict):
            return self.dtype.get(name, self.dtype.get("default"))
        return self.dtype

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

    def _model_kwargs(self, name: str) -> dict:
        kwargs = {"dtype": self.dtype_of(name), "device_map": self.device_map, "variant": self.variant}
        return {key: value for key, value in kwargs.items() if value is not None}

    def load(self, name: str):
        if name in _SCHEDULER_KIND:
            if (self.path(name) / LLaDA2UniFlowMatchEulerScheduler.config_name).is_file():
                return LLaDA2UniFlowMatchEulerScheduler.from_pretrained(self.folder, subfolder=self.subfolders[name])
            return LLaDA2UniFlowMatchEulerScheduler(**SCHEDULER_SETTINGS[_SCHEDULER_KIND[name]])
        if name in _MODEL_CLASSES:
            model = _MODEL_CLASSES[name].from_pretrained(self.folder, subfolder=self.subfolders[name],
                                                         **self._model_kwargs(name))
            if name == "vae":
                check_vae_config(model.config, self.path(name) / "config.json")
            return model.eval()
        # The transformers half lives at the root; the loaders read it there (plugin classes, else remote code).
        if name == "mllm":
            return LLaDA2UniModelLoader.from_pretrained(self.path(name) / name, **self._model_kwargs(name),
                                                        **self.model_kwargs)
        if name == "processor":
            return LLaDA2UniProcessorLoader.from_pretrained(self.path(name) / name)
        raise ValueError(f"unknown component {name!r}")


def check_vae_config(config, path):
    """The latent is mapped to the VAE as latent / scaling_factor + shift_factor: a zero or non-finite factor would
    decode every picture blank or NaN without a word."""
    import math

    for key in ("scaling_factor", "shift_factor"):
        value = getattr(config, key, None)
        bad = value is None or not isinstance(value, (int, float)) or not math.isfinite(value)
        if bad or (key == "scaling_factor" and value == 0):
            raise ValueError(f"{path}: `{key}` is {value!r}; the decoder needs a finite, non-zero scaling_factor "
                             "and a finite shift_factor (re-convert the folder).")


def decoder_component_names(decoders) -> list:
    names = ["semantic_embedder", "vae"]
    for decoder in decoders:
        names += list(DECODERS[decoder])
    return names


def save_components(components: dict, folder, pipeline_class: str, **save_kwargs) -> Path:
    """Write every non-None component into its folder of `folder`, with the code files and the model_index.json
    that list them (`hub_files.write_pipeline_files`)."""
    folder = Path(folder)
    unknown = [name for name, component in components.items() if component is not None and name not in LIBRARIES]
    if unknown:
        raise ValueError(f"cannot save the unknown component(s) {unknown}")
    present = [name for name, component in components.items() if component is not None]
    with staged_save(folder) as staging:
        for name in present:
            save_component(components[name], staging / SUBFOLDERS[name], **save_kwargs)
        write_pipeline_files(staging, present, pipeline_class)
    return folder


def save_component(component, folder: Path, safe_serialization: bool = True, variant: Optional[str] = None):
    """`save_pretrained` with the arguments each library accepts (transformers 5 always writes safetensors)."""
    from transformers import PreTrainedModel

    kwargs = {"variant": variant} if variant is not None else {}
    if isinstance(component, torch.nn.Module) and not isinstance(component, PreTrainedModel):
        kwargs["safe_serialization"] = safe_serialization
    component.save_pretrained(folder, **kwargs)


__all__ = ["HUB_KWARGS", "ComponentSource", "decoder_component_names", "resolve_folder", "save_component",
           "save_components"]
