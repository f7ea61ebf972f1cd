"""LoRA presets for LLaDA2 / LLaDA2.0-Uni (backbone-and-performance.md §8, §10.4).

* "default": attention (`attention.query_key_value`, `attention.dense`), the dense MLP of the first layers and the
  shared experts. Routed experts and the router stay frozen: each routed expert sees a sparse slice of the tokens
  (its adapter trains poorly) and a frozen router keeps routing stable. This is NeMo's LLaDA2 recipe plus the
  shared experts.
* "experts": "default" plus the fused routed experts through PEFT's `target_parameters`
  (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`; LoRA on a 3-D parameter, which needs `lora_dropout=0`).
* "attention": attention only (the smallest adapter).

The vision tokenizer (`visual`, `vqmodel`) is never targeted: the patterns are anchored at `model.layers`.
"""

import re

PRESETS = ("default", "experts", "attention")
_ATTENTION = r"attention\.(query_key_value|dense)"
_MLP = r"mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj)"
_EXPERT_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def lora_config(preset: str = "default", *, r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
                **kwargs):
    """A `peft.LoraConfig` for `preset` (see the module docstring); extra keyword arguments go to `LoraConfig`."""
    from peft import LoraConfig

    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {', '.join(PRESETS)}; got {preset!r}.")
    parts = [_ATTENTION] if preset == "attention" else [_ATTENTION, _MLP]
    target_modules = rf".*model\.layers\.\d+\.({'|'.join(parts)})"
    options = {"r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "target_modules": target_modules}
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
    """`peft.get_peft_model` with a preset name or a `LoraConfig`, after checking that every target matches."""
    from peft import LoraConfig, get_peft_model

    config = preset_or_config if isinstance(preset_or_config, LoraConfig) else lora_config(preset_or_config,
                                                                                            **kwargs)
    check_lora_targets(model, config)
    return get_peft_model(model, config)


__all__ = ["PRESETS", "check_lora_targets", "get_lora_model", "lora_config"]
