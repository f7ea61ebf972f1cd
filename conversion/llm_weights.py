"""Key mapping of the LLaDA2 MoE backbone: original per-expert checkpoint keys -> this project's fused expert tensors.

Every key keeps its name except the routed experts of each MoE layer:

    model.layers.N.mlp.experts.E.gate_proj.weight [I, H] ┐
    model.layers.N.mlp.experts.E.up_proj.weight   [I, H] ┴> model.layers.N.mlp.experts.gate_up_proj [E, 2I, H]
    model.layers.N.mlp.experts.E.down_proj.weight [H, I] --> model.layers.N.mlp.experts.down_proj    [E, H, I]

(row block e of `gate_up_proj` is expert e's gate rows followed by its up rows). Kept FP8 experts (`llm_fp8.py`) fuse
their per-expert `weight_scale_inv` / `weight_scale` grids the same way into `gate_up_proj_scale_inv` / `down_proj_scale_inv`. `rotary_emb.inv_freq` (a derived
buffer some exports carry) is dropped. `mlp.gate.expert_bias` is always stored in float32 and may be absent.
"""

import re
from dataclasses import dataclass

import torch

from conversion.checkpoint_io import ConversionError, _short_list, dtype_name, nbytes, raise_problems
from conversion.fp8 import FP8_DTYPES

EXPERT_KEY = re.compile(
    r"^(?P<prefix>(?:.+\.)?layers\.\d+\.mlp\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)"
    r"\.(?P<suffix>weight|weight_scale_inv|weight_scale)$"
)
# Fused tensor names per kind of per-expert source (FP8 checkpoints kept as FP8 carry block scales next to weights).
FUSED_NAMES = {"weight": ("gate_up_proj", "down_proj"), "scale": ("gate_up_proj_scale_inv", "down_proj_scale_inv")}
# Derived buffers that some exports save; the model recomputes them.
DROPPED_KEY = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
# Tensors kept in float32 whatever the requested dtype (the router's selection bias), and allowed to be absent.
FP32_KEY = re.compile(r"(^|\.)mlp\.gate\.expert_bias$|(^|\.)experts\.(gate_up|down)_proj_scale_inv$")
OPTIONAL_KEY = re.compile(r"(^|\.)mlp\.gate\.expert_bias$")


@dataclass
class TargetTensor:
    """One tensor of the converted checkpoint and how to build it from the source."""

    name: str
    shape: tuple
    dtype: torch.dtype
    kind: str  # "copy" | "gate_up" | "down"
    sources: tuple  # copy: (key,); gate_up: (gate_0, up_0, gate_1, up_1, ...); down: (down_0, down_1, ...)

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)


def expected_llm_tensors(config, model_class=None) -> dict:
    """{name: shape} of `model_class(config)`'s state dict (default `LLaDA2MoeForCausalLM`), in module order, built
    on the meta device."""
    from transformers_llada_uni import LLaDA2MoeForCausalLM

    with torch.device("meta"):
        model = (model_class or LLaDA2MoeForCausalLM)(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def output_dtype(name: str, source_dtype: torch.dtype, requested) -> torch.dtype:
    """The dtype a tensor is written in: float32 for `expert_bias`, the request for floating tensors, else as stored."""
    if FP32_KEY.search(name):
        return torch.float32
    if requested is None or not source_dtype.is_floating_point:
        return source_dtype
    return requested


def plan_llm_weights(source_info: dict, expected: dict, requested_dtype):
    """Map every source tensor onto the expected state dict.

    Args:
        source_info: {source key: (shape, dtype)} of the original checkpoint.
        expected: {target name: shape} of the model (see `expected_llm_tensors`), in write order.
        requested_dtype: a floating `torch.dtype`, or `None` to keep the stored dtypes.

    Returns `(targets, notes)`: the `TargetTensor`s in `expected` order and human-readable remarks. Raises
    `ConversionError` naming every source key that maps nowhere, every target left unfilled and every shape mismatch.
    """
    plain, groups, dropped = {}, {}, []
    for key in source_info:
        match = EXPERT_KEY.match(key)
        if match:
            kind = "weight" if match["suffix"] == "weight" else "scale"
            groups.setdefault((match["prefix"], kind), {})[(int(match["expert"]), match["proj"])] = key
        elif DROPPED_KEY.search(key):
            dropped.append(key)
        else:
            plain[key] = key

    unknown, missing, mismatched, built = [], [], [], {}

    def check_shape(key, shape, want):
        if tuple(shape) != tuple(want):
            mismatched.append(f"{key} {list(shape)} (expected {list(want)})")
            return False
        return True

    for key in plain:
        if key not in expected:
            unknown.append(key)
            continue
        shape, dtype = source_info[key]
        if check_shape(key, shape, expected[key]):
            built[key] = TargetTensor(key, tuple(shape), output_dtype(key, dtype, requested_dtype), "copy", (key,))

    for (prefix, kind), members in groups.items():
        gate_up_name, down_name = (f"{prefix}.{name}" for name in FUSED_NAMES[kind])
        if gate_up_name not in expected or down_name not in expected:
            unknown.extend(sorted(members.values()))
            continue
        num_experts, two_rows, cols = expected[gate_up_name]
        unknown.extend(key for (expert, _), key in sorted(members.items()) if expert >= num_experts)
        suffix = next(iter(members.values())).rsplit(".", 1)[1]
        absent = [f"{prefix}.{e}.{proj}.{suffix}" for e in range(num_experts)
                  for proj in ("gate_proj", "up_proj", "down_proj") if (e, proj) not in members]
        missing.extend(absent)
        if absent:
            continue
        want = {"gate_proj": (two_rows // 2, cols), "up_proj": (two_rows // 2, cols),
                "down_proj": tuple(expected[down_name][1:])}
        shapes_ok = all(check_shape(members[(e, p)], source_info[members[(e, p)]][0], want[p])
                        for e in range(num_experts) for p in want)
        if not shapes_ok:
            continue
        gate_up_sources = tuple(members[(e, p)] for e in range(num_experts) for p in ("gate_proj", "up_proj"))
        down_sources = tuple(members[(e, "down_proj")] for e in range(num_experts))
        for name, fused, sources in ((gate_up_name, "gate_up", gate_up_sources), (down_name, "down", down_sources)):
            dtypes = {source_info[key][1] for key in sources}
            if requested_dtype is None and len(dtypes) > 1:
                mismatched.append(f"{name}: its experts are stored in different dtypes "
                                  f"({', '.join(sorted(dtype_name(d) for d in dtypes))}); pass --dtype")
                continue
            dtype = dtypes.pop()
            dtype = dtype if dtype in FP8_DTYPES else output_dtype(name, dtype, requested_dtype)
            built[name] = TargetTensor(name, tuple(expected[name]), dtype, fused, sources)

    notes = []
    if dropped:
        notes.append(f"dropped {len(dropped)} derived tensor(s) the model recomputes: "
                     f"{_short_list(sorted(dropped), 3)}")
    fused_names = {f"{p}.{name}" for p, kind in groups for name in FUSED_NAMES[kind]}
    unfilled = [name for name in expected if name not in built and name not in fused_names]
    optional = [name for name in unfilled if OPTIONAL_KEY.search(name)]
    for name in unfilled:
        if OPTIONAL_KEY.search(name):
            continue
        if name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            # No expert of this layer is in the source at all: name the source tensors that were expected.
            prefix, suffix = name.rsplit(".", 1)
            projs = "{gate_proj,up_proj}" if suffix == "gate_up_proj" else "down_proj"
            name = f"{prefix}.{{0..{expected[name][0] - 1}}}.{projs}.weight"
        missing.append(name)
    if optional:
        notes.append(f"{len(optional)} MoE layer(s) have no `expert_bias` in the source; the model's zero "
                     f"initialisation stands for them ({_short_list(optional, 2)})")

    raise_problems([("source tensors that map to nothing in LLaDA2MoeForCausalLM", sorted(unknown)),
                    ("tensors missing from the source", missing), ("shape/dtype mismatches", mismatched)])
    return [built[name] for name in expected if name in built], notes


def plan_tensors(source_info: dict, expected: dict, requested_dtype, label: str, class_name: str, renames=None):
    """Map `source_info` ({key: (shape, dtype)}) onto `expected` ({name: shape}), renaming key prefixes by `renames`.

    Returns the `TargetTensor`s in `expected` order. Raises `ConversionError` naming (by their source keys) every key
    that maps to nothing, every expected tensor left unfilled and every shape mismatch.
    """
    renames = renames or {}
    back = {new: old for old, new in renames.items()}

    def rename(key, table):
        prefix = next((p for p in table if key.startswith(p)), None)
        return key if prefix is None else table[prefix] + key[len(prefix):]

    unknown, mismatched, built, origin = [], [], {}, {}
    for key, (shape, dtype) in source_info.items():
        name = rename(key, renames)
        if name in origin:
            raise ConversionError(f"{label} holds both {origin[name]} and {key}, which are the same tensor {name}")
        origin[name] = key
        if name not in expected:
            unknown.append(key)
        elif tuple(shape) != tuple(expected[name]):
            mismatched.append(f"{key} {list(shape)} (expected {list(expected[name])})")
        else:
            built[name] = TargetTensor(name, tuple(shape), output_dtype(name, dtype, requested_dtype), "copy", (key,))
    missing = [rename(name, back) for name in expected if name not in origin]
    raise_problems([(f"{label} tensors that map to nothing in {class_name}", sorted(unknown)),
                    (f"tensors missing from {label}", missing), (f"shape mismatches in {label}", mismatched)])
    return [built[name] for name in expected]


def build_tensor(target: TargetTensor, source) -> torch.Tensor:
    """Materialise one target tensor, loading only its own source tensors (one expert at a time when fusing)."""
    if target.kind == "copy":
        return source.get(target.sources[0]).to(target.dtype).contiguous()
    out = torch.empty(target.shape, dtype=target.dtype)
    if target.kind == "down":
        for expert, key in enumerate(target.sources):
            out[expert].copy_(source.get(key))
        return out
    inter = target.shape[1] // 2
    for expert in range(target.shape[0]):
        out[expert, :inter].copy_(source.get(target.sources[2 * expert]))
        out[expert, inter:].copy_(source.get(target.sources[2 * expert + 1]))
    return out


def dominant_dtype(targets) -> torch.dtype:
    """The floating dtype holding most parameters (float32-pinned tensors aside): what config.json's `dtype` says."""
    totals = {}
    for target in targets:
        # FP8 experts carry their own dtype; config.json names the dtype everything else is loaded in.
        if target.dtype.is_floating_point and target.dtype not in FP8_DTYPES and not FP32_KEY.search(target.name):
            count = 1
            for dim in target.shape:
                count *= dim
            totals[target.dtype] = totals.get(target.dtype, 0) + count
    return max(totals, key=totals.get) if totals else torch.float32
