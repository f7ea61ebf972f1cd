"""Loader components that let diffusers load the transformers half of a converted LLaDA2.0-Uni repo.

diffusers loads each pipeline component from the folder of its name. The LLM and its processor live at the repo root
(where `AutoModel` / `AutoProcessor` read them), so `mllm/` and `processor/` hold only a copy of this file:
`model_index.json` names these classes, and their `from_pretrained` loads the root instead. With the plugin installed
its classes are used; without it, the root's remote code (`trust_remote_code=True`). This file imports only the
standard library, transformers and huggingface_hub, so it works as remote code.
"""

import json
import os

from transformers import AutoModelForCausalLM, AutoProcessor, PretrainedConfig, PreTrainedModel, ProcessorMixin

# diffusers passes these to every transformers component; they mean nothing to (or are gone from) transformers 5.
_DROPPED = ("low_cpu_mem_usage", "offload_state_dict", "use_flashpack", "disable_mmap")


def repo_root(component_path) -> str:
    """The repo root of a component folder diffusers hands over (`<root>/mllm` -> `<root>`)."""
    return os.path.dirname(os.path.normpath(str(component_path)))


def _snapshot_of(root: str):
    """(repo id, revision, cache dir) when `root` is a snapshot of the Hugging Face cache, else None."""
    snapshots = os.path.dirname(root)
    repo_folder = os.path.dirname(snapshots)
    name = os.path.basename(repo_folder)
    if os.path.basename(snapshots) != "snapshots" or not name.startswith("models--"):
        return None
    return name[len("models--"):].replace("--", "/"), os.path.basename(root), os.path.dirname(repo_folder)


def ensure_root_files(root: str):
    """diffusers downloads the root's weights, config and tokenizer files but not its remote-code `.py` files;
    fetch the small files of the same snapshot when a module that `config.json` names is missing."""
    config = os.path.join(root, "config.json")
    if not os.path.isfile(config):
        return
    with open(config, encoding="utf-8") as handle:
        auto_map = json.load(handle).get("auto_map", {})
    modules = {reference.split("--")[-1].split(".")[0] for reference in auto_map.values() if isinstance(reference, str)}
    if all(os.path.isfile(os.path.join(root, f"{module}.py")) for module in modules):
        return
    snapshot = _snapshot_of(root)
    if snapshot is None:
        missing = sorted(m for m in modules if not os.path.isfile(os.path.join(root, f"{m}.py")))
        raise OSError(f"{root} lacks the remote-code file(s) {missing} that its config.json names.")
    from huggingface_hub import snapshot_download

    repo_id, revision, cache_dir = snapshot
    snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                      allow_patterns=["*.py", "*.json", "*.jinja", "*.txt", "*.model"])


def _plugin():
    try:
        import transformers_llada_uni
    except ImportError:
        return None
    return transformers_llada_uni


class _LoaderConfig(PretrainedConfig):
    model_type = "llada2_uni_loader"


class LLaDA2UniModelLoader(PreTrainedModel):
    """`from_pretrained(<root>/mllm, ...)` returns the `LLaDA2UniForConditionalGeneration` stored at the root.
    A `PreTrainedModel`, so that diffusers hands it `dtype`, `device_map` and `variant`."""

    config_class = _LoaderConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        root = repo_root(pretrained_model_name_or_path)
        kwargs = {key: value for key, value in kwargs.items() if key not in _DROPPED}
        kwargs = {key: value for key, value in kwargs.items() if value is not None or key == "device_map"}
        plugin = _plugin()
        if plugin is not None:
            return plugin.LLaDA2UniForConditionalGeneration.from_pretrained(root, *args, **kwargs).eval()
        ensure_root_files(root)
        return AutoModelForCausalLM.from_pretrained(root, *args, trust_remote_code=True, **kwargs).eval()


class LLaDA2UniProcessorLoader(ProcessorMixin):
    """`from_pretrained(<root>/processor)` returns the `LLaDA2UniProcessor` stored at the root."""

    attributes = []

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        root = repo_root(pretrained_model_name_or_path)
        plugin = _plugin()
        if plugin is not None:
            return plugin.LLaDA2UniProcessor.from_pretrained(root)
        ensure_root_files(root)
        return AutoProcessor.from_pretrained(root, trust_remote_code=True)


__all__ = ["LLaDA2UniModelLoader", "LLaDA2UniProcessorLoader", "ensure_root_files", "repo_root"]
