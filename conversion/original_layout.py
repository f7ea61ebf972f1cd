"""The original LLaDA2 / LLaDA2.0-Uni layout, as `export_to_original.py` writes it back from a converted folder.

Weights (the inverse of `llm_weights.py`, `uni_checkpoint.py` and `decoder_checkpoint.py`):

    model.layers.N.mlp.experts.gate_up_proj [E, 2I, H] -> model.layers.N.mlp.experts.E.gate_proj.weight [I, H]
                                                          (rows 0..I-1 of block E), ...E.up_proj.weight (rows I..2I-1)
    model.layers.N.mlp.experts.down_proj    [E, H, I]  -> model.layers.N.mlp.experts.E.down_proj.weight  [H, I]
    every other LLM key                                -> itself
    visual.* / vqmodel.*                               -> image_tokenizer/model.safetensors: model.visual.* /
                                                          model.vqmodel.*
    semantic_embedder (5 tensors)                      -> image_tokenizer/sigvq_embedding.pt (torch.save'd dict)
    transformer, transformer_turbo: cap_embedder.*     -> decoder/, decoder-turbo/model.safetensors: semantic_embedder.*
    vae                                                -> vae/diffusion_pytorch_model.safetensors, keys verbatim

(the left column names pipeline components; their converted subfolders are `diffusers_llada_uni.hub_layout`'s).

Configs: the root `config.json` gets the original `architectures` / `auto_map` / `model_type` back and loses the
bookkeeping keys transformers 5 and our classes add (see `original_root_config`); `image_tokenizer/config.json` and
`preprocessor_config.json` are rebuilt with the original key sets.
"""

import re
from dataclasses import dataclass

import torch

from conversion.checkpoint_io import ConversionError, _short_list, nbytes, raise_problems
from conversion.llm_weights import EXPERT_KEY, OPTIONAL_KEY, output_dtype

# --- root config.json -------------------------------------------------------------------------------------------------

# The head of the original root config.json. "uni": LLaDA2.0-Uni (inclusionAI/LLaDA2.0-Uni, reference §4.1; its remote
# code files configuration_llada2uni_moe.py / modeling_llada2uni_moe.py are not part of the Hub snapshot we know);
# "text": LLaDA2.0-mini / -flash (backbone reference §2.1, transformers_version of the dFactory copy).
ORIGINAL_HEADS = {
    "uni": {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_llada2uni_moe.LLaDA2MoeConfig",
            "AutoModel": "modeling_llada2uni_moe.LLaDA2MoeModelLM",
            "AutoModelForCausalLM": "modeling_llada2uni_moe.LLaDA2MoeModelLM",
        },
        "model_type": "llada2_moe",
        "transformers_version": "4.51.0",
    },
    "text": {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
            "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
            "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
        },
        "model_type": "llada2_moe",
        "transformers_version": "4.52.3",
    },
}
# The key order of the released Uni config.json; other keys follow in alphabetical order.
ORIGINAL_KEY_ORDER = (
    "architectures", "auto_map", "model_type", "torch_dtype", "transformers_version", "vocab_size",
    "image_token_offset", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "moe_intermediate_size", "first_k_dense_replace", "num_experts", "num_shared_experts",
    "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "hidden_act", "use_qkv_bias", "use_bias",
    "use_qk_norm", "rms_norm_eps", "rope_theta", "partial_rotary_factor", "rope_scaling", "rope_parameters",
    "max_position_embeddings", "attention_dropout", "embedding_dropout", "output_dropout", "initializer_range",
    "pad_token_id", "use_cache", "sliding_window", "output_router_logits", "tie_word_embeddings",
)
# Keys of the converted text config that are not written back: transformers' own bookkeeping (`dtype` becomes the
# original's `torch_dtype`) and `is_causal`, a constant our config class forces on every load. None of them is in an
# original config; a second conversion of the export recreates them.
DROPPED_CONFIG_KEYS = ("_name_or_path", "dtype", "torch_dtype", "transformers_version", "is_causal", "experts_fp8")
# Fields of our config class that are dropped while unset (None): no original config has them.
DROPPED_WHEN_NONE = ("diffusion_training",)
# PretrainedConfig's generic keys, dropped when they hold transformers' default value (transformers 5 writes them all
# into a nested config; the original config has none of them).
GENERIC_CONFIG_DEFAULTS = {
    "architectures": None, "output_hidden_states": False, "output_attentions": False, "return_dict": True,
    "chunk_size_feed_forward": 0, "is_encoder_decoder": False, "problem_type": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
}
# LLaDA2UniConfig fields -> the token whose id the forward converter reads from the tokenizer when config.json has none.
UNI_ID_TOKENS = {
    "image_start_token_id": "<|image|>",
    "image_end_token_id": "<|/image|>",
    "boi_token_id": "<boi>",
    "uncondition_token_id": "<uncondition>",
    "reserved_token_start_id": "<|reserved_token_0|>",
}


def _json_equal(a, b) -> bool:
    """Equality as JSON would see it (dict keys as strings)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {str(k): v for k, v in a.items()} == {str(k): v for k, v in b.items()}
    return a == b


def original_root_config(text_config: dict, *, torch_dtype: torch.dtype, uni_ids: dict = None,
                         tokenizer_ids: dict = None) -> dict:
    """The original root config.json from our text config (`LLaDA2MoeConfig.to_dict()`).

    Every key of the text config is kept under its name except `DROPPED_CONFIG_KEYS` and generic keys at their
    transformers default. `architectures`, `auto_map`, `model_type` and `transformers_version` are the original's
    ("uni" head when the config has an `image_token_offset`, else "text"); `torch_dtype` names the written weights;
    `rope_scaling` is restored as null (our config folds it into `rope_parameters`, which is kept: the Uni config has
    both). `uni_ids` ({LLaDA2UniConfig field: id}) are written only where the tokenizer (`tokenizer_ids`, {token: id})
    does not give that id: the forward converter reads them from the tokenizer otherwise, and the original config has
    none of them.
    """
    flavour = "uni" if text_config.get("image_token_offset") is not None else "text"
    out = dict(ORIGINAL_HEADS[flavour])
    fp8 = text_config.get("experts_fp8")
    if fp8 is not None and fp8.get("source", {}).get("quantization_config") is not None:
        out["quantization_config"] = fp8["source"]["quantization_config"]  # the FP8 release's own, restored
    out["torch_dtype"] = str(torch_dtype).removeprefix("torch.")
    for key, value in text_config.items():
        if key in DROPPED_CONFIG_KEYS or key in out or (key in DROPPED_WHEN_NONE and value is None):
            continue
        if key in GENERIC_CONFIG_DEFAULTS and _json_equal(value, GENERIC_CONFIG_DEFAULTS[key]):
            continue
        out[key] = value
    if "rope_scaling" not in out:
        rope = dict(out.get("rope_parameters") or {})
        if rope.get("rope_type", "default") == "default":
            out["rope_scaling"] = None
        else:  # not reachable with today's config class (it accepts only "default"); the legacy spelling otherwise
            out["rope_scaling"] = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    tokenizer_ids = tokenizer_ids or {}
    for field, value in (uni_ids or {}).items():
        if value is not None and tokenizer_ids.get(UNI_ID_TOKENS[field]) != value:
            out[field] = value
    order = {key: i for i, key in enumerate(ORIGINAL_KEY_ORDER)}
    return dict(sorted(out.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


# --- image_tokenizer/ -------------------------------------------------------------------------------------------------

IMAGE_TOKENIZER_DIR = "image_tokenizer"
IMAGE_TOKENIZER_WEIGHTS = "model.safetensors"  # the parity checkpoint's name; the original loader globs *.safetensors
SIGVQ_FILE = "sigvq_embedding.pt"
# Pipeline component (a key of `diffusers_llada_uni.hub_layout.SUBFOLDERS`) -> where the release keeps it: conversion
# reads each pixel part from here and export writes it back here.
ORIGINAL_PIXEL_PATHS = {
    "semantic_embedder": f"{IMAGE_TOKENIZER_DIR}/{SIGVQ_FILE}",
    "transformer": "decoder",
    "transformer_turbo": "decoder-turbo",
    "vae": "vae",
}
# Our prefix -> the original's.
IMAGE_PREFIXES = {"visual.": "model.visual.", "vqmodel.": "model.vqmodel."}
# The keys of the original image_tokenizer/config.json (reference §3.1, the parity checkpoint).
ORIGINAL_IMAGE_KEYS = {
    "vision_config": ("hidden_size", "intermediate_size", "num_heads", "depth", "patch_size", "image_size",
                      "in_channels", "hidden_act", "attention_bias", "layer_norm_eps", "spatial_merge_size"),
    "vq_config": ("num_embeddings", "embed_dim", "latent_channels", "beta"),
}
# The original preprocessor_config.json (GLM-Image style, reference §3.2); the six keys our processor carries
# (`uni_checkpoint.PROCESSOR_KEYS`) are taken from the converted folder.
ORIGINAL_PREPROCESSOR = {
    "image_processor_type": "GlmImageImageProcessor",
    "processor_class": "GlmImageProcessor",
    "patch_size": 16,
    "temporal_patch_size": 1,
    "merge_size": 1,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "rescale_factor": 1 / 255,
    "do_rescale": True,
    "do_normalize": True,
    "do_resize": False,
    "do_convert_rgb": True,
    "resample": 3,
    "min_pixels": 262144,
    "max_pixels": 4194304,
}
CARRIED_PREPROCESSOR_KEYS = ("patch_size", "image_mean", "image_std", "rescale_factor", "do_rescale", "do_normalize")


def original_image_config(vision_config, vq_config) -> dict:
    """image_tokenizer/config.json: the original keys of each sub-config, plus any other model key that differs from
    the GLM-Image class default (transformers' generic keys are left out)."""
    out = {}
    for name, config in (("vision_config", vision_config), ("vq_config", vq_config)):
        values = config.to_dict()
        defaults = type(config)().to_dict()
        section = {key: values[key] for key in ORIGINAL_IMAGE_KEYS[name] if key in values}
        for key, value in values.items():
            if (key in section or key in DROPPED_CONFIG_KEYS or key in GENERIC_CONFIG_DEFAULTS or key == "model_type"
                    or _json_equal(value, defaults.get(key))):
                continue
            section[key] = value
        out[name] = section
    return out


def original_preprocessor_config(ours: dict, patch_size: int) -> dict:
    """The GLM-Image style preprocessor_config.json, with our processor's six carried values (`ours` may be {})."""
    out = dict(ORIGINAL_PREPROCESSOR)
    out["patch_size"] = patch_size
    for key in CARRIED_PREPROCESSOR_KEYS:
        if ours.get(key) is not None:
            out[key] = ours[key]
    if out["patch_size"] != patch_size:
        raise ConversionError(f"preprocessor_config.json: patch_size {out['patch_size']} differs from the vision "
                              f"encoder's patch_size {patch_size}")
    return out


# --- tokenizer --------------------------------------------------------------------------------------------------------

# Copied when present. chat_template.* only for a root without a processor: the composite's chat_template.jinja is
# the LLaDA2UniProcessor's prompt template, written by the converter, which the original never had.
TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json",
                   "merges.txt")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# tokenizer_config.json keys transformers 5 writes that a 4.x loader would pass on to the tokenizer as kwargs.
TOKENIZER_BOOKKEEPING = ("backend", "is_local", "local_files_only")


def original_tokenizer_config(config: dict, has_fast: bool):
    """tokenizer_config.json for transformers 4.x: transformers 5's `TokenizersBackend` class name becomes
    `PreTrainedTokenizerFast` (the class the original loads), its bookkeeping keys go. Returns (dict, changes)."""
    config, changes = dict(config), []
    if has_fast and config.get("tokenizer_class") in ("TokenizersBackend", None):
        changes.append(f"tokenizer_class {config.get('tokenizer_class')!r} -> 'PreTrainedTokenizerFast'")
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    dropped = [key for key in TOKENIZER_BOOKKEEPING if config.pop(key, None) is not None]
    if dropped:
        changes.append(f"dropped {', '.join(dropped)}")
    return config, changes


# --- weights ----------------------------------------------------------------------------------------------------------

FUSED_KEY = re.compile(
    r"^(?P<prefix>(?:.+\.)?layers\.\d+\.mlp\.experts)\.(?P<proj>gate_up_proj|down_proj)(?P<scale>_scale_inv)?$"
)


@dataclass
class ExportTensor:
    """One tensor of the original layout: read `source` (whole, or `[expert, rows]` of a fused expert stack)."""

    name: str
    shape: tuple
    dtype: torch.dtype
    source: str
    select: tuple = None  # (expert, first row, end row) of a fused tensor; rows None = the whole expert block
    reshape: tuple = None  # the original's own shape of an FP8 scale ([] per tensor, [rows] per row)

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)


def check_against_model(info: dict, expected: dict, label: str, class_name: str, optional=None):
    """Raise `ConversionError` unless `info` ({key: (shape, dtype)}) holds exactly the `expected` ({key: shape})
    tensors (those matching the regex `optional` may be absent) with their shapes."""
    per_expert = sorted(key for key in info if EXPERT_KEY.match(key))
    if per_expert:
        raise ConversionError(f"{label} holds per-expert tensors ({_short_list(per_expert, 2)}): it is in the original "
                              "layout already, not a converted checkpoint (export reads the output of "
                              "convert_llada2_uni_to_hf.py or of save_pretrained)")
    unknown = sorted(key for key in info if key not in expected)
    missing = [key for key in expected if key not in info and not (optional and optional.search(key))]
    mismatched = [f"{key} {list(info[key][0])} (expected {list(shape)})" for key, shape in expected.items()
                  if key in info and tuple(info[key][0]) != tuple(shape)]
    raise_problems([(f"{label} tensors that are not in {class_name}", unknown),
                    (f"tensors missing from {label}", missing), (f"shape mismatches in {label}", mismatched)],
                   suffix=" (is it a converted LLaDA2 checkpoint?)")


def plan_llm_export(info: dict, order, requested_dtype, fp8_source: dict = None):
    """The original LLM tensors for our keys `order` (present in `info`): fused experts split per expert, the rest
    verbatim; `expert_bias` float32. With `fp8_source` (`experts_fp8["source"]` of a kept-FP8 model) the float8
    experts stay float8 and their fused scales are split the same way, under the original scale name and shape."""
    out = []
    for key in order:
        shape, dtype = info[key]
        match = FUSED_KEY.match(key)
        if match is None:
            out.append(ExportTensor(key, tuple(shape), output_dtype(key, dtype, requested_dtype), key))
            continue
        prefix, experts = match["prefix"], shape[0]
        suffix, reshape, want = "weight", None, requested_dtype
        if fp8_source is not None:
            want = None  # float8 experts and their float32 scales are written as they are, whatever --dtype says
        if match["scale"]:
            suffix = fp8_source["scale_suffix"]
        rows_per_part = shape[1] // 2 if match["proj"] == "gate_up_proj" else shape[1]
        if match["scale"] and fp8_source["scale_rank"] < 2:
            # A [1, 1] grid was a per-tensor scale ([]); a [rows, 1] grid a per-row one ([rows]).
            reshape = () if fp8_source["scale_rank"] == 0 else (rows_per_part,)
        parts = ((("gate_proj", 0), ("up_proj", rows_per_part)) if match["proj"] == "gate_up_proj"
                 else (("down_proj", None),))
        for e in range(experts):
            for proj, start in parts:
                name = f"{prefix}.{e}.{proj}.{suffix}"
                part_shape = reshape if reshape is not None else (rows_per_part, shape[2])
                select = (e, None, None) if start is None else (e, start, start + rows_per_part)
                out.append(ExportTensor(name, tuple(part_shape), output_dtype(name, dtype, want), key, select,
                                        reshape))
    return out


def plan_renamed(info: dict, order, requested_dtype, renames: dict):
    """Verbatim tensors for our keys `order`, with the key prefixes in `renames` ({ours: original}) replaced."""
    out = []
    for key in order:
        shape, dtype = info[key]
        prefix = next((p for p in renames if key.startswith(p)), None)
        name = key if prefix is None else renames[prefix] + key[len(prefix):]
        out.append(ExportTensor(name, tuple(shape), output_dtype(name, dtype, requested_dtype), key))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ConversionError(f"two tensors would be written as the same original key: {_short_list(names)}")
    return out


class TensorReader:
    """Builds `ExportTensor`s from a source with `.get(key)`. A fused expert stack is read once and kept until another
    one is asked for (the planned order keeps each stack's experts together): peak memory is one fused tensor."""

    def __init__(self, source):
        self.source = source
        self._cached_key, self._cached = None, None

    def build(self, tensor: ExportTensor) -> torch.Tensor:
        if tensor.select is None:
            return self.source.get(tensor.source).to(tensor.dtype).contiguous()
        if self._cached_key != tensor.source:
            self._cached = None  # drop the previous stack before reading the next
            self._cached = self.source.get(tensor.source)
            self._cached_key = tensor.source
        expert, start, end = tensor.select
        block = self._cached[expert] if start is None else self._cached[expert, start:end]
        if tensor.reshape is not None:
            block = block.reshape(tensor.reshape)
        return block.to(dtype=tensor.dtype, copy=True).contiguous()  # own storage: save_file refuses shared memory

    def release(self):
        self._cached_key, self._cached = None, None


def expected_info(tensors) -> dict:
    """{name: (shape, dtype)} of planned `ExportTensor`s (what `check_written` compares against)."""
    return {t.name: (tuple(t.shape), t.dtype) for t in tensors}

