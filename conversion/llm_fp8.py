"""FP8 releases of the LLM: keep the routed experts in FP8 (with their scales) or dequantize, as `--dtype` says.

* `--dtype keep`: the routed experts stay float8 and are fused like any expert weight, their scales fused the same
  way into `experts.gate_up_proj_scale_inv` / `experts.down_proj_scale_inv` (float32 block grids), and the config
  gets `experts_fp8` so the model builds FP8 expert parameters (dequantizing only the experts each forward hits).
  Any other float8 weight (the model has no FP8 path for it) is dequantized to bf16, with a note.
* `--dtype bf16|fp32`: every float8 weight is dequantized (fp8 x scale, in float32) and then cast.

Either way the source's `quantization_config` is dropped from the config: left in place, transformers would try to
apply its own FP8 quantizer on load.
"""

import torch

from conversion.checkpoint_io import ConversionError, dtype_name
from conversion.fp8 import Fp8Source, plan_fp8, scale_grid
from conversion.llm_weights import EXPERT_KEY


def prepare_llm_fp8(text_config, source, requested_dtype, log):
    """Returns the source to plan and build from: `source` itself when nothing is FP8, else an `Fp8Source` whose
    `info` describes the tensors as they will be read (dequantized weights as float32 or bf16, scales as grids).
    Sets `text_config.experts_fp8` when experts stay FP8."""
    quantization = getattr(text_config, "quantization_config", None)
    if quantization is not None:
        delattr(text_config, "quantization_config")
        log(f"note: the source's quantization_config ({quantization.get('quant_method', '?')}) is replaced by this "
            "project's FP8 handling")
    plan = plan_fp8(source.info, {"quantization_config": quantization or {}}, str(source.folder))
    if plan.dropped:
        log(f"note: dropped {len(plan.dropped)} static activation scale(s) (activations run in bf16/fp32)")
    if not plan and not plan.dropped:
        return source
    experts = {key for key in plan.weights if EXPERT_KEY.match(key)}
    keep = requested_dtype is None and bool(experts)
    dequantize = set(plan.weights) - experts if keep else set(plan.weights)
    if keep:
        text_config.experts_fp8 = _experts_layout(plan, experts, text_config)
        # What the export back to the original layout needs to write the same tensors and config again.
        sample = plan.weights[min(experts)]
        text_config.experts_fp8["source"] = {
            "scale_suffix": sample.scale_key.rsplit(".", 1)[1],
            "scale_rank": len(source.info[sample.scale_key][0]),
            "quantization_config": quantization,
        }
        log(f"FP8: {len(experts)} routed expert weights kept in {dtype_name(plan.dtype)} with their scales "
            f"(blocks: gate/up {text_config.experts_fp8['gate_up_block_size']}, down "
            f"{text_config.experts_fp8['down_block_size']})")
    elif plan:
        log(f"FP8: {len(plan.weights)} weights dequantized (fp8 x scale) to "
            f"{dtype_name(requested_dtype or torch.bfloat16)}")
    if keep and dequantize:
        log(f"note: {len(dequantize)} FP8 weight(s) outside the routed experts are dequantized to bf16 (the model "
            "has FP8 support for routed experts only)")
    info = {key: value for key, value in source.info.items() if key not in plan.dropped}
    for key in dequantize:
        shape, _ = info[key]
        info[key] = (shape, torch.float32 if requested_dtype is not None else torch.bfloat16)
        del info[plan.weights[key].scale_key]
    for key in experts - dequantize:
        entry = plan.weights[key]
        grid = scale_grid(torch.empty(info[entry.scale_key][0]), info[key][0])
        info[entry.scale_key] = (tuple(grid.shape), torch.float32)
    wrapped = Fp8Source(source, plan, dequantize)
    wrapped.info = info
    return wrapped


def _experts_layout(plan, experts, config) -> dict:
    """`experts_fp8` for the config: one block size for every gate/up weight and one for every down weight, such
    that the fused [gate; up] rows keep whole blocks."""
    blocks = {"gate_up": set(), "down": set()}
    for key in experts:
        kind = "down" if EXPERT_KEY.match(key)["proj"] == "down_proj" else "gate_up"
        blocks[kind].add(plan.weights[key].block)
    inter, hidden = config.moe_intermediate_size, config.hidden_size
    layout = {"dtype": dtype_name(plan.dtype)}
    for kind, (rows, cols) in (("gate_up", (inter, hidden)), ("down", (hidden, inter))):
        if len(blocks[kind]) != 1:
            raise ConversionError(f"the FP8 {kind} expert weights use several scale layouts "
                                  f"({sorted(blocks[kind])}); pass --dtype bf16 to dequantize them")
        block = blocks[kind].pop()
        if rows % block[0] or cols % block[1]:
            raise ConversionError(f"FP8 {kind} expert blocks {list(block)} do not tile the [{rows}, {cols}] weights "
                                  "(kept FP8 experts need whole blocks); pass --dtype bf16 to dequantize them")
        layout[f"{kind}_block_size"] = list(block)
    return layout


__all__ = ["prepare_llm_fp8"]
