"""FP8 weights in an original checkpoint (the `-FP8` release): find them, pair each with its scale, dequantize.

The release's exact format is not documented ([open] in reference §2.1 / §11). Two layouts are recognised, each
recorded per weight from the safetensors headers, never guessed from the model name:

* block scales (DeepSeek-V3 / transformers "fine-grained FP8"): `X.weight` in float8 and `X.weight_scale_inv`
  [ceil(rows / br), ceil(cols / bc)] in float32, with `quantization_config.weight_block_size` = [br, bc]
  (default [128, 128]); the weight is `fp8 * scale_inv` block by block.
* per-tensor or per-row scales (AutoFP8 / compressed-tensors): `X.weight` in float8 and `X.weight_scale` of shape
  [], [1], [rows] or [rows, 1]; the weight is `fp8 * scale`. `X.input_scale` (static activation scales) is dropped:
  this model computes activations in bf16 / fp32.

A float8 weight without a scale, or a scale without its weight, stops the conversion.
"""

import re
from dataclasses import dataclass, field

import torch

from conversion.checkpoint_io import ConversionError, raise_problems

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIXES = ("weight_scale_inv", "weight_scale")
DROPPED_SUFFIX = re.compile(r"\.input_scale$")


@dataclass
class Fp8Weight:
    scale_key: str
    block: tuple  # (rows, cols) of weight elements sharing one scale; may overhang the weight's last block


@dataclass
class Fp8Plan:
    """The FP8 weights of a source: `weights` {weight key: Fp8Weight}, the scale keys they consume, dropped keys."""

    weights: dict = field(default_factory=dict)
    scale_keys: set = field(default_factory=set)
    dropped: list = field(default_factory=list)
    dtype: torch.dtype = None

    def __bool__(self):
        return bool(self.weights)


def plan_fp8(source_info: dict, config_dict: dict, label: str) -> Fp8Plan:
    """Pair every float8 tensor of `source_info` ({key: (shape, dtype)}) with its scale."""
    plan = Fp8Plan()
    quantization = config_dict.get("quantization_config") or {}
    block_size = tuple(quantization.get("weight_block_size") or (128, 128))
    unpaired, bad = [], []
    for key, (shape, dtype) in source_info.items():
        if DROPPED_SUFFIX.search(key):
            plan.dropped.append(key)
            continue
        if dtype not in FP8_DTYPES:
            continue
        if plan.dtype not in (None, dtype):
            raise ConversionError(f"{label}: mixed float8 formats ({plan.dtype} and {dtype}) are not supported")
        plan.dtype = dtype
        stem = key[: -len("weight")] if key.endswith(".weight") else None
        scale_key = next((stem + s for s in SCALE_SUFFIXES if stem and stem + s in source_info), None)
        if scale_key is None or len(shape) != 2:
            unpaired.append(key)
            continue
        scale_shape = source_info[scale_key][0]
        block = _block(shape, scale_shape, block_size if scale_key.endswith("_inv") else None)
        if block is None:
            bad.append(f"{scale_key} {list(scale_shape)} for a weight {list(shape)}")
            continue
        plan.weights[key] = Fp8Weight(scale_key, block)
        plan.scale_keys.add(scale_key)
    orphans = [key for key in source_info if key.endswith(SCALE_SUFFIXES) and key not in plan.scale_keys]
    raise_problems([(f"{label}: float8 weights without a `weight_scale_inv` / `weight_scale` beside them",
                     sorted(unpaired)),
                    (f"{label}: scales whose shape fits no known FP8 layout", bad),
                    (f"{label}: scales of no float8 weight", sorted(orphans))])
    return plan


def _block(shape, scale_shape, block_size):
    rows, cols = shape
    if block_size is not None:  # block scales: one per block_size tile, the last row / column of tiles may overhang
        br, bc = block_size
        return (br, bc) if tuple(scale_shape) == (-(-rows // br), -(-cols // bc)) else None
    if tuple(scale_shape) in ((), (1,), (1, 1)):
        return (rows, cols)
    if tuple(scale_shape) in ((rows,), (rows, 1)):
        return (1, cols)
    return None


def scale_grid(scale: torch.Tensor, weight_shape) -> torch.Tensor:
    """A scale tensor as the 2-D grid of its blocks ([] -> [1, 1], [rows] -> [rows, 1]), in float32."""
    scale = scale.to(torch.float32)
    if scale.dim() == 0 or scale.numel() == 1 and scale.dim() == 1:
        return scale.reshape(1, 1)
    if scale.dim() == 1:
        return scale.reshape(-1, 1)
    return scale


def dequantize(weight: torch.Tensor, scale: torch.Tensor, block) -> torch.Tensor:
    """float8 weight x its block scales -> float32 (the value the FP8 checkpoint stands for)."""
    rows, cols = weight.shape
    grid = scale_grid(scale, weight.shape)
    expanded = grid.repeat_interleave(block[0], dim=0)[:rows].repeat_interleave(block[1], dim=1)[:, :cols]
    return weight.to(torch.float32) * expanded


class Fp8Source:
    """Wraps a checkpoint source: FP8 weights come back dequantized to float32 (`dequantize_keys`) or as stored,
    scales as float32 block grids; every other tensor as stored."""

    def __init__(self, source, plan: Fp8Plan, dequantize_keys):
        self.source, self.plan, self.dequantize_keys = source, plan, set(dequantize_keys)
        self.weight_shapes = {plan.weights[k].scale_key: source.info[k][0] for k in plan.weights}

    def get(self, key: str) -> torch.Tensor:
        tensor = self.source.get(key)
        if key in self.dequantize_keys:
            entry = self.plan.weights[key]
            return dequantize(tensor, self.source.get(entry.scale_key), entry.block)
        if key in self.weight_shapes:
            return scale_grid(tensor, self.weight_shapes[key])
        return tensor

    def __getattr__(self, name):
        return getattr(self.source, name)


__all__ = ["FP8_DTYPES", "Fp8Plan", "Fp8Source", "Fp8Weight", "dequantize", "plan_fp8", "scale_grid"]
