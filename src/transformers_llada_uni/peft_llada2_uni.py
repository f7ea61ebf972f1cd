"""LoRA presets for LLaDA2 / LLaDA2.0-Uni (backbone-and-performance.md §8, §10.4).

* "default": attention (`attention.query_key_value`, `attention.dense`), the dense MLP of the first layers and the
  shared experts. Routed experts and the router stay frozen: each routed expert sees a sparse slice of the tokens
  (its adapter trains poorly) and a frozen router keeps routing stable. This is NeMo's LLaDA2 recipe plus the
  shared experts.
* "experts": "default" plus the fused routed experts through PEFT's `target_parameters`
  (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`; LoRA on a 3-D parameter, which needs `lora_dropout=0`).
* "attention": attention only (the smallest adapter).

The vision tokenizer (`visual`, `vqmodel`) is never targeted: the patterns are anchored at `model.layers`.

Saved adapters load without this package: `save_lora_adapter` (or `finish_adapter_folder` after any save) makes
`AutoPeftModelForCausalLM.from_pretrained(adapter, trust_remote_code=True)` resolve the base model through its own
remote code, and writes a model card (README.md) that says how to load the adapter.
"""

import copy
import json
import os
import re
from pathlib import Path

PRESETS = ("default", "experts", "attention")
_ATTENTION = r"attention\.(query_key_value|dense)"
_MLP = r"mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj)"
_EXPERT_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
# With no task type, PEFT records the base model's Python class in adapter_config.json (`auto_mapping`): here a
# module of this package or a `transformers_modules` remote-code module, neither importable (nor on AutoPeftModel's
# import allowlist) without the plugin. With CAUSAL_LM it records none, and AutoPeftModelForCausalLM loads the base
# through AutoModelForCausalLM, which every LLaDA2 checkpoint's `auto_map` points at its remote code.
TASK_TYPE = "CAUSAL_LM"


def lora_config(preset: str = "default", *, r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
                **kwargs):
    """A `peft.LoraConfig` for `preset` (see the module docstring); extra keyword arguments go to `LoraConfig`."""
    from peft import LoraConfig

    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {', '.join(PRESETS)}; got {preset!r}.")
    parts = [_ATTENTION] if preset == "attention" else [_ATTENTION, _MLP]
    target_modules = rf".*model\.layers\.\d+\.({'|'.join(parts)})"
    options = {"r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "target_modules": target_modules,
               "task_type": TASK_TYPE}
    if preset == "experts":
        # PEFT's parameter wrapper (LoRA on nn.Parameter) supports no dropout.
        options.update(target_parameters=list(_EXPERT_PARAMETERS), lora_dropout=0.0)
    options.update(kwargs)
    return LoraConfig(**options)


def check_lora_targets(model, config) -> dict:
    """Raise `ValueError` naming every target of `config` that matches nothing in `model` (PEFT only warns for
    `target_parameters`, and a plain list of module names silently matches nothing on a renamed model). Returns
    {"modules": [...], "parameters": [...]} with the matched names."""
    names = [name for name, _ in model.named_modules()]
    targets = config.target_modules
    if isinstance(targets, str):
        modules = [name for name in names if re.fullmatch(targets, name)]
        unmatched = [] if modules else [targets]
    else:
        targets = sorted(targets or [])
        modules = [name for name in names if any(name == t or name.endswith("." + t) for t in targets)]
        unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    parameter_names = [name for name, _ in model.named_parameters()]
    wanted = list(getattr(config, "target_parameters", None) or [])
    parameters = [name for name in parameter_names if any(name.endswith(t) for t in wanted)]
    unmatched += [t for t in wanted if not any(name.endswith(t) for name in parameter_names)]
    if unmatched:
        raise ValueError(f"LoRA targets that match nothing in {type(model).__name__}: {', '.join(unmatched)} "
                         "(module names look like model.layers.N.attention.query_key_value; fused experts are "
                         "parameters: mlp.experts.gate_up_proj / mlp.experts.down_proj).")
    return {"modules": modules, "parameters": parameters}


def get_lora_model(model, preset_or_config="default", **kwargs):
    """`peft.get_peft_model` with a preset name or a `LoraConfig`, after checking that every target matches. A
    `LoraConfig` without `task_type` is wrapped as a causal LM (on a copy; see TASK_TYPE) so its saved adapter loads
    without this package."""
    from peft import LoraConfig, get_peft_model

    if isinstance(preset_or_config, LoraConfig):
        config = preset_or_config
        if config.task_type is None:
            config = copy.deepcopy(config)
            config.task_type = TASK_TYPE
    else:
        config = lora_config(preset_or_config, **kwargs)
    check_lora_targets(model, config)
    return get_peft_model(model, config)


def save_lora_adapter(model, output_dir, *, base_model=None, adapter_id=None, **kwargs):
    """`model.save_pretrained(output_dir, **kwargs)` for a PEFT model, then `finish_adapter_folder` (plugin-free
    loading and the model card). Returns the folder."""
    model.save_pretrained(str(output_dir), **kwargs)
    return finish_adapter_folder(output_dir, base_model=base_model, adapter_id=adapter_id)


def finish_adapter_folder(folder, *, base_model=None, adapter_id=None):
    """Make a saved LLaDA2 LoRA adapter folder load without this package and give it a model card.

    * `base_model_name_or_path` becomes `base_model` when given (e.g. the Hub id the base is published under), else
      an absolute path when it names a local folder (a relative one breaks from any other directory).
    * An `auto_mapping` naming one of our classes (PEFT writes it for configs without `task_type`) is pointed at
      `transformers.AutoModelForCausalLM`, which loads the base through its `auto_map` and remote code.
    * README.md is rewritten (PEFT's save leaves its blank template there): Hub metadata and the two ways to load
      the adapter, naming it `adapter_id` (its Hub id once pushed) or else this folder's absolute path.

    A named adapter saved in a subfolder is finished by passing that subfolder. Returns the folder.
    """
    folder = Path(folder)
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no adapter_config.json in {folder} (save the PEFT model there first; a named "
                                "adapter lives in a subfolder of that name)")
    config = json.loads(path.read_text())
    base = base_model or config.get("base_model_name_or_path")
    if base and not base_model and Path(base).expanduser().is_dir():
        base = str(Path(base).expanduser().resolve())
    config["base_model_name_or_path"] = base
    if (config.get("auto_mapping") or {}).get("base_model_class") in _OUR_CLASSES:
        config["auto_mapping"] = {"base_model_class": "AutoModelForCausalLM", "parent_library": "transformers"}
    _write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    _write_text(folder / "README.md", adapter_card(config, adapter_id or str(folder.resolve())))
    return folder


# Our model classes' names: an auto_mapping naming one of them is ours to rewrite (all map to AutoModelForCausalLM).
_OUR_CLASSES = {"LLaDA2UniForConditionalGeneration", "LLaDA2MoeForCausalLM"}


def adapter_card(config: dict, adapter: str) -> str:
    """The README.md of an adapter folder: Hub metadata front matter and loading snippets (plain transformers + peft,
    remote code of the base model). `config` is the adapter's adapter_config.json, `adapter` its path or Hub id."""
    base = config.get("base_model_name_or_path")
    tags = ["llada2", "llada2-uni", "masked-diffusion", "diffusion-llm", "lora", "peft"]
    if base:
        tags.append(f"base_model:adapter:{base}")
    meta = ["library_name: peft"] + ([f"base_model: {_yaml_scalar(base)}"] if base else [])
    meta += ["tags:"] + [f"- {_yaml_scalar(tag)}" for tag in tags]
    targets = config.get("target_modules")
    targets = targets if isinstance(targets, str) else ", ".join(sorted(targets or []))
    parameters = ", ".join(config.get("target_parameters") or [])
    experts = f", fused expert parameters `{parameters}`" if parameters else ""
    base_arg = json.dumps(base or "BASE_MODEL")  # BASE_MODEL: the base folder or Hub id, not recorded at saving
    adapter_arg = json.dumps(adapter)
    front = "\n".join(["---", *meta, "---"])
    return f"""{front}

# LoRA adapter for {base or "a LLaDA2 model"}

A PEFT LoRA adapter for a LLaDA2 / LLaDA2.0-Uni masked-diffusion mixture-of-experts model. The base model brings its
own code (`trust_remote_code=True`), so plain `transformers` and `peft` load both; the `llada-uni` package need not
be installed.

* rank {config.get("r")}, alpha {config.get("lora_alpha")}, modules `{targets}`{experts}
* base model: `{base or "not recorded (pass base_model= to finish_adapter_folder)"}`

## Load

```python
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained({adapter_arg}, trust_remote_code=True)
```

or load the base model first:

```python
from peft import PeftModel
from transformers import AutoModel

base = AutoModel.from_pretrained({base_arg}, trust_remote_code=True)
model = PeftModel.from_pretrained(base, {adapter_arg})
```

`model.merge_and_unload()` folds the adapter into the weights (a plain model again). The processor is the base
model's: `AutoProcessor.from_pretrained({base_arg}, trust_remote_code=True)`.
"""


def _yaml_scalar(text: str) -> str:
    """Plain when YAML reads it back unchanged; else a JSON string (also valid YAML), e.g. for a path with a colon."""
    return text if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./-]*", text) else json.dumps(text)


def _write_text(path: Path, text: str):
    """Write to a temporary name and rename, so an interrupted save never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


__all__ = ["PRESETS", "TASK_TYPE", "adapter_card", "check_lora_targets", "finish_adapter_folder", "get_lora_model",
           "lora_config", "save_lora_adapter"]
