"""Export a converted (or fine-tuned and saved) LLaDA2 / LLaDA2.0-Uni folder back to the original release layout.

    python conversion/export_to_original.py --hf /path/to/llada2-uni-hf --output /path/to/LLaDA2.0-Uni-export

The inverse of convert_llada2_uni_to_hf.py, for engines that read the original layout (SGLang-Omni, the original
scripts): the root LLM with per-expert weights (`model-0000i-of-0000n.safetensors` + index) and the original config
keys, `image_tokenizer/` (weights, config.json, GLM-Image preprocessor_config.json, sigvq_embedding.pt), `decoder/`,
`decoder-turbo/` and `vae/`. Only the parts the folder has are exported. Everything is written to a temporary folder
next to the output, checked, and only then moved into place: a failed run leaves nothing behind. See
docs/conversion.md ("Export back to the original layout") and original_layout.py for the mapping.
"""

import argparse
import copy
import json
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a script: make `conversion.*` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from conversion.checkpoint_io import (  # noqa: E402
    ConversionError,
    SourceCheckpoint,
    _short_list,
    check_written,
    dtype_name,
    exit_status,
    parse_size,
    plan_shards,
    write_shards,
)
from conversion.convert_llada2_uni_to_hf import _resolve_dtype  # noqa: E402
from conversion.llm_checkpoint import copy_present_files  # noqa: E402
from conversion.original_layout import (  # noqa: E402
    CHAT_TEMPLATE_FILES,
    IMAGE_PREFIXES,
    IMAGE_TOKENIZER_DIR,
    IMAGE_TOKENIZER_WEIGHTS,
    OPTIONAL_KEY,
    ORIGINAL_PIXEL_PATHS,
    TOKENIZER_FILES,
    UNI_ID_TOKENS,
    TensorReader,
    check_against_model,
    expected_info,
    original_image_config,
    original_preprocessor_config,
    original_root_config,
    original_tokenizer_config,
    plan_llm_export,
    plan_renamed,
)
from conversion.staging import check_paths, staged_output  # noqa: E402

DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
ROOT_WEIGHTS_NAME = "model.safetensors"
# Our decoder prefix -> the original's (the inverse of decoder_checkpoint.DECODER_RENAMES).
DECODER_RENAMES = {"cap_embedder.": "semantic_embedder."}
NO_LIMIT = float("inf")


@dataclass
class Part:
    """One weights file (or sharded set) of the original layout and where its tensors come from."""

    label: str  # the source, for messages
    folder: str  # relative to the output root ("." for the root)
    weights_name: str  # file name; `.pt` = torch.save'd dict (the SigVQ embedding)
    tensors: list  # ExportTensor, in write order
    source: object  # `.get(key)`
    max_bytes: float = NO_LIMIT  # shard bound; the original loaders of the subfolders open one file
    files: dict = field(default_factory=dict)  # other files to write: name -> dict (JSON)
    back_check: object = None  # callable({name: (shape, dtype)}): the forward converter's mapping must accept them


def _read_json(path: Path):
    if not path.is_file():
        raise ConversionError(f"no {path.name} in {path.parent}")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path} must hold a JSON object")
    return value


def _write_json(path: Path, value: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


# --- planning ---------------------------------------------------------------------------------------------------------


def _load_root_config(hf_dir: Path):
    """(config, model class, composite?) of the converted root; refuses folders that are not converted LLaDA2 ones."""
    from transformers_llada_uni import (
        LLaDA2MoeConfig,
        LLaDA2MoeForCausalLM,
        LLaDA2UniConfig,
        LLaDA2UniForConditionalGeneration,
    )

    config_file = hf_dir / "config.json"
    raw = _read_json(config_file)
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or []
    if "LLaDA2MoeModelLM" in architectures:
        raise ConversionError(f"{config_file} declares LLaDA2MoeModelLM: {hf_dir} is in the original layout already, "
                              "not a converted checkpoint")
    classes = {"llada2_uni": (LLaDA2UniConfig, LLaDA2UniForConditionalGeneration),
               "llada2_moe": (LLaDA2MoeConfig, LLaDA2MoeForCausalLM)}
    if model_type not in classes:
        raise ConversionError(f"{config_file} has model_type {model_type!r}: not a converted LLaDA2 checkpoint "
                              "(expected 'llada2_uni' or 'llada2_moe')")
    config_class, model_class = classes[model_type]
    try:
        config = config_class.from_pretrained(str(hf_dir))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ConversionError(f"{config_file}: {' '.join(str(exc).split())}") from None
    return config, model_class, model_type == "llada2_uni"


def _plan_root(hf_dir: Path, requested, max_bytes, log, stack):
    """The root LLM part, the image tokenizer part (composite) and the root's other files."""
    from conversion.llm_checkpoint import special_token_ids
    from conversion.llm_weights import dominant_dtype, expected_llm_tensors, plan_llm_weights

    config, model_class, composite = _load_root_config(hf_dir)
    text_config = config.get_text_config()
    fp8 = getattr(text_config, "experts_fp8", None)
    if fp8 is not None and "source" not in fp8:
        raise ConversionError(f"{hf_dir} keeps its routed experts in FP8 but its config does not record the source's "
                              "scale layout (experts_fp8['source']); re-convert the original FP8 release")
    source = stack.enter_context(SourceCheckpoint(hf_dir))
    expected = expected_llm_tensors(config, model_class)
    check_against_model(source.info, expected, f"the weights of {hf_dir}", model_class.__name__, OPTIONAL_KEY)
    image_keys = [k for k in expected if k.startswith(tuple(IMAGE_PREFIXES))] if composite else []
    llm_expected = {k: v for k, v in expected.items() if k not in set(image_keys)}
    llm_tensors = plan_llm_export(source.info, [k for k in llm_expected if k in source.info], requested,
                                  fp8["source"] if fp8 is not None else None)
    torch_dtype = dominant_dtype(llm_tensors)

    def llm_back_check(info):
        if fp8 is not None:
            # The forward converter's FP8 pass must pair every float8 weight with its scale again.
            from conversion.llm_fp8 import prepare_llm_fp8

            replay = copy.deepcopy(text_config)
            replay.experts_fp8 = None
            replay.quantization_config = fp8["source"]["quantization_config"] or {}
            info = prepare_llm_fp8(replay, SimpleNamespace(info=info, folder=hf_dir), None, lambda message: None).info
        plan_llm_weights(info, llm_expected, None)

    uni_ids = {name: getattr(config, name, None) for name in UNI_ID_TOKENS} if composite else None
    token_ids = special_token_ids(hf_dir, UNI_ID_TOKENS.values()) if composite else None
    root_config = original_root_config(text_config.to_dict(), torch_dtype=torch_dtype, uni_ids=uni_ids,
                                       tokenizer_ids=token_ids)
    root = Part(f"{hf_dir.name}/ (LLM)", ".", ROOT_WEIGHTS_NAME, llm_tensors, TensorReader(source), max_bytes,
                {"config.json": root_config}, llm_back_check)
    experts = sum(1 for t in llm_tensors if t.select is not None)
    log(f"LLM: {len(llm_tensors)} tensors ({experts} per-expert matrices from "
        f"{sum(1 for k in llm_expected if k.endswith('.experts.gate_up_proj'))} fused MoE layers), "
        f"config.json for {root_config['architectures'][0]} (auto_map -> {root_config['auto_map']['AutoConfig']})")
    parts = [root]
    if composite:
        parts.append(_plan_image_tokenizer(hf_dir, config, source, image_keys, expected, requested))
    return parts, composite


def _plan_image_tokenizer(hf_dir, config, source, image_keys, expected, requested) -> Part:
    from conversion.uni_checkpoint import plan_image_tokenizer_weights

    tensors = plan_renamed(source.info, image_keys, requested, IMAGE_PREFIXES)
    image_expected = {k: expected[k] for k in image_keys}
    label = f"{IMAGE_TOKENIZER_DIR}/{IMAGE_TOKENIZER_WEIGHTS}"

    def back_check(info):
        plan_image_tokenizer_weights(info, image_expected, None, label)

    processor_file = hf_dir / "preprocessor_config.json"
    ours = _read_json(processor_file) if processor_file.is_file() else {}
    files = {
        "config.json": original_image_config(config.vision_config, config.vq_config),
        "preprocessor_config.json": original_preprocessor_config(ours, config.vision_config.patch_size),
    }
    return Part("visual.* / vqmodel.*", IMAGE_TOKENIZER_DIR, IMAGE_TOKENIZER_WEIGHTS, tensors, TensorReader(source),
                NO_LIMIT, files, back_check)


def _subfolders(hf_dir: Path) -> dict:
    """Pixel-side pipeline component -> converted subfolder (the layout table; an earlier conversion's folders)."""
    from diffusers_llada_uni.hub_layout import read_subfolders

    subfolders = read_subfolders(hf_dir)
    return {name: subfolders[name] for name in ORIGINAL_PIXEL_PATHS}


def _plan_pixel(hf_dir: Path, requested, log, stack):
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    from conversion.decoder_checkpoint import DECODER_RENAMES as FORWARD_RENAMES
    from conversion.decoder_checkpoint import meta_state_shapes
    from conversion.llm_weights import plan_tensors
    from diffusers_llada_uni.hub_layout import LIBRARIES
    from diffusers_llada_uni.semantic_embedder import LLaDA2UniSemanticEmbedder

    classes = {"LLaDA2UniSemanticEmbedder": LLaDA2UniSemanticEmbedder,
               "ZImageTransformer2DModel": ZImageTransformer2DModel, "AutoencoderKL": AutoencoderKL}
    parts = []
    for name, folder_name in _subfolders(hf_dir).items():
        folder = hf_dir / folder_name
        if not folder.is_dir() or folder == hf_dir:
            continue
        original_path, class_name = ORIGINAL_PIXEL_PATHS[name], LIBRARIES[name][1]
        model_class = classes[class_name]
        config_file = folder / "config.json"
        config = _read_json(config_file)
        if config.get("_class_name", class_name) != class_name:
            raise ConversionError(f"{config_file} declares {config['_class_name']!r}, expected {class_name!r}")
        expected = meta_state_shapes(model_class, config, config_file, log)
        source = stack.enter_context(SourceCheckpoint(folder, weights_name=DIFFUSERS_WEIGHTS_NAME))
        label = f"{folder_name}/{DIFFUSERS_WEIGHTS_NAME}"
        check_against_model(source.info, expected, label, class_name)
        is_decoder = class_name == "ZImageTransformer2DModel"
        tensors = plan_renamed(source.info, list(expected), requested, DECODER_RENAMES if is_decoder else {})

        def back_check(info, expected=expected, label=original_path, class_name=class_name, is_decoder=is_decoder):
            plan_tensors(info, expected, None, label, class_name, FORWARD_RENAMES if is_decoder else None)

        if name == "semantic_embedder":
            if config.get("upsample_factor", 2) != 2:
                log(f"warning: {config_file} says upsample_factor {config['upsample_factor']}; the original code "
                    "always upsamples by 2")
            (out_folder, weights_name), files = original_path.rsplit("/", 1), {}
        else:
            out_folder, weights_name = original_path, ROOT_WEIGHTS_NAME if is_decoder else DIFFUSERS_WEIGHTS_NAME
            files = {"config.json": config}
        parts.append(Part(label, out_folder, weights_name, tensors, TensorReader(source), NO_LIMIT, files,
                          back_check))
    return parts


# --- writing and checking ---------------------------------------------------------------------------------------------


def _write_part(part: Part, staging: Path, log):
    folder = staging / part.folder
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, content in part.files.items():
        _write_json(folder / file_name, content)
    total = sum(t.nbytes for t in part.tensors)
    by_name = {t.name: t for t in part.tensors}
    if part.weights_name.endswith(".pt"):
        # A plain dict of tensors, each with its own storage (torch.save writes whole storages).
        state = {t.name: part.source.build(t).clone() for t in part.tensors}
        torch.save(state, folder / part.weights_name)
        del state
        shard_count = 1
    else:
        shards = plan_shards([(t.name, t.nbytes) for t in part.tensors], part.max_bytes)
        write_shards(folder, shards, lambda name: part.source.build(by_name[name]), total, part.weights_name)
        shard_count = len(shards)
    part.source.release()
    where = part.weights_name if part.folder == "." else f"{part.folder}/{part.weights_name}"
    dtypes = sorted({dtype_name(t.dtype) for t in part.tensors})
    log(f"{part.label} -> {where}: {len(part.tensors)} tensors ({total / 1e6:.1f} MB, {'/'.join(dtypes)})"
        f"{f' in {shard_count} shards' if shard_count > 1 else ''}")


def _check_part(part: Part, staging: Path):
    """Re-read what was written: key set, shapes, dtypes, shard bound and index; then the forward converter's mapping
    must take the written keys back onto the model."""
    folder = staging / part.folder
    expected = expected_info(part.tensors)
    if part.weights_name.endswith(".pt"):
        path = folder / part.weights_name
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConversionError(f"the written {path.name} does not read back: {exc}") from None
        got = {k: (tuple(v.shape), v.dtype) for k, v in state.items()} if isinstance(state, dict) else {}
        if got != expected:
            bad = sorted(set(got.items()) ^ set(expected.items()))
            raise ConversionError(f"the written {path.name} failed verification: {_short_list([str(b) for b in bad])}")
        del state
    else:
        check_written(folder, expected, part.max_bytes, part.weights_name)
    if part.back_check is not None:
        try:
            part.back_check(expected)
        except ConversionError as exc:
            raise ConversionError(f"the exported {part.folder}/{part.weights_name} would not convert back: {exc}") \
                from None


def _copy_tokenizer(hf_dir: Path, staging: Path, composite_with_processor: bool, log):
    names = list(TOKENIZER_FILES) + ([] if composite_with_processor else list(CHAT_TEMPLATE_FILES))
    copied = copy_present_files(hf_dir, staging, names)
    config_file = hf_dir / "tokenizer_config.json"
    if config_file.is_file():
        config, changes = original_tokenizer_config(_read_json(config_file), (hf_dir / "tokenizer.json").is_file())
        _write_json(staging / "tokenizer_config.json", config)
        copied.append("tokenizer_config.json")
        if changes:
            log("tokenizer_config.json: " + "; ".join(changes))
    log(f"tokenizer: {', '.join(copied)}" if copied else f"note: no tokenizer files in {hf_dir}; the export has none")


def export(hf_dir, output, *, dtype="keep", max_shard_size="5GB", overwrite=False, quiet=False):
    """Export the converted folder `hf_dir` to the original LLaDA2 / LLaDA2.0-Uni layout in `output`; returns its Path.

    Args:
        hf_dir: a folder written by convert_llada2_uni_to_hf.py, or by `save_pretrained` of `LLaDA2MoeForCausalLM` /
            `LLaDA2UniForConditionalGeneration` (with the pipeline's diffusers subfolders, if any).
        output: the folder to create. It must not exist unless `overwrite=True`.
        dtype: "bf16", "fp32" or "keep" (as stored) for the floating weights of every part; `expert_bias` is always
            written in float32 and integer tensors are never cast.
        max_shard_size: the largest root shard, e.g. "5GB". The subfolders are always one file each (the original
            loaders open `model.safetensors` / `diffusion_pytorch_model.safetensors` by name).
        overwrite: replace an existing `output` (only after the new folder is complete and verified).
        quiet: print nothing.

    Raises `ConversionError` with a one-line reason; then neither `output` nor a temporary folder is left behind.
    """
    log = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    hf_dir = Path(hf_dir).expanduser().resolve()
    output = Path(os.path.abspath(Path(output).expanduser()))
    requested = _resolve_dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    check_paths(hf_dir, "--hf", output, overwrite)

    with staged_output(output, "exporting") as staging:
        log(f"exporting {hf_dir} -> {output} (original layout)")
        with ExitStack() as stack:
            # Every part is planned (configs read, keys and shapes checked) before anything is written.
            parts, composite = _plan_root(hf_dir, requested, max_bytes, log, stack)
            parts += _plan_pixel(hf_dir, requested, log, stack)
            for part in parts:
                _write_part(part, staging, log)
            _copy_tokenizer(hf_dir, staging, composite and (hf_dir / "processor_config.json").is_file(), log)
        for part in parts:
            _check_part(part, staging)
        log(f"checked: {sum(len(p.tensors) for p in parts)} tensors in {len(parts)} weight file set(s) re-read, and "
            "they map back onto the models")
    log(f"done: {output}")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Export a converted LLaDA2 / LLaDA2.0-Uni folder back to the original checkpoint layout "
                    "(per-expert weights, original config, image_tokenizer/, decoder/, decoder-turbo/, vae/).",
    )
    parser.add_argument("--hf", required=True, help="the converted (or fine-tuned, save_pretrained) folder")
    parser.add_argument("--output", required=True, help="folder to create")
    parser.add_argument("--dtype", default="keep", choices=["bf16", "fp32", "keep"],
                        help="dtype of the floating weights (default: keep as stored; expert_bias stays float32)")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="largest root weight shard, e.g. 5GB, 200MB (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)
    return exit_status(lambda: export(args.hf, args.output, dtype=args.dtype, max_shard_size=args.max_shard_size,
                                      overwrite=args.overwrite, quiet=args.quiet))


if __name__ == "__main__":
    sys.exit(main())
