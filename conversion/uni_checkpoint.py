"""A LLaDA2.0-Uni root (LLM + `image_tokenizer/`) -> one `LLaDA2UniForConditionalGeneration` folder.

The LLM keys are converted exactly as for a text-only folder (`llm_weights.py`). The image tokenizer's single
`image_tokenizer/*.safetensors` (the release names it `model.safetensors` or `image_tokenizer.safetensors`) maps by
stripping a prefix, nothing else:

    model.visual.*   -> visual.*    (transformers `GlmImageVisionModel`)
    model.vqmodel.*  -> vqmodel.*   (transformers `GlmImageVQVAE`; `post_quant_conv` is kept, unused by encoding)

Any other prefix is an error. `image_tokenizer/preprocessor_config.json` becomes our `LLaDA2UniImageProcessor`'s
`preprocessor_config.json`. `sigvq_embedding.pt`, `decoder/`, `decoder-turbo/` and `vae/` are not converted here.
"""

import json
import shutil
from pathlib import Path

from conversion.checkpoint_io import ConversionError, SourceCheckpoint, _short_list, check_written
from conversion.llm_checkpoint import (
    _read_json,
    build_config,
    check_forward,
    finish_folder,
    load_for_verify,
    plan_llm,
    plan_weights,
    special_token_ids,
    write_weights,
)
from conversion.llm_fp8 import prepare_llm_fp8
from conversion.llm_weights import dominant_dtype, expected_llm_tensors, plan_tensors
from conversion.original_layout import IMAGE_TOKENIZER_DIR

# Original prefix -> our module prefix. Nothing else may appear in the image tokenizer's weights.
IMAGE_PREFIXES = {"model.visual.": "visual.", "model.vqmodel.": "vqmodel."}
# LLaDA2UniConfig field -> the token whose id it holds (looked up in the tokenizer unless config.json sets it).
UNI_SPECIAL_TOKENS = {
    "image_start_token_id": "<|image|>",
    "image_end_token_id": "<|/image|>",
    "boi_token_id": "<boi>",
    "uncondition_token_id": "<uncondition>",
    "reserved_token_start_id": "<|reserved_token_0|>",
}
# image_tokenizer/config.json keys whose GLM-Image defaults are the full-size model's (never right for another one).
REQUIRED_IMAGE_KEYS = {
    "vision_config": ("hidden_size", "intermediate_size", "num_heads", "depth", "patch_size", "image_size"),
    "vq_config": ("num_embeddings", "embed_dim", "latent_channels"),
}
# preprocessor_config.json keys carried over into LLaDA2UniImageProcessor (its other settings keep their defaults).
PROCESSOR_KEYS = ("patch_size", "image_mean", "image_std", "rescale_factor", "do_rescale", "do_normalize")


def is_uni_root(folder: Path) -> bool:
    return (Path(folder) / IMAGE_TOKENIZER_DIR).is_dir()


def image_tokenizer_weights(folder: Path) -> str:
    """The name of the one `*.safetensors` file in `folder` (the image tokenizer's weights)."""
    names = sorted(path.name for path in Path(folder).glob("*.safetensors"))
    if len(names) != 1:
        found = ", ".join(names) if names else "none"
        raise ConversionError(f"{folder} must hold exactly one *.safetensors file (the image tokenizer weights); "
                              f"found {found}")
    return names[0]


def build_uni_config(src: Path, text_config, log):
    """`LLaDA2UniConfig` from the root config (already read into `text_config`), image_tokenizer/config.json and the
    tokenizer's image special ids."""
    from transformers_llada_uni import LLaDA2UniConfig

    image_config_file = src / IMAGE_TOKENIZER_DIR / "config.json"
    if not image_config_file.is_file():
        raise ConversionError(f"no config.json in {src / IMAGE_TOKENIZER_DIR}")
    image_config = _read_json(image_config_file)
    sub_configs = {}
    for name, required in REQUIRED_IMAGE_KEYS.items():
        value = image_config.get(name)
        if not isinstance(value, dict):
            raise ConversionError(f"{image_config_file} has no `{name}` object")
        absent = [key for key in required if key not in value]
        if absent:
            log(f"note: {image_config_file} lacks {name}.{{{','.join(absent)}}}; the GLM-Image defaults (full-size "
                "model) stand for them")
        sub_configs[name] = dict(value)

    original = _read_json(src / "config.json")
    token_ids = special_token_ids(src, UNI_SPECIAL_TOKENS.values())
    ids = {}
    for field, token in UNI_SPECIAL_TOKENS.items():
        ids[field] = original.get(field) if original.get(field) is not None else token_ids.get(token)
    if original.get("image_token_offset") is None:
        log("note: config.json has no image_token_offset; using vocab_size - codebook size")
    try:
        config = LLaDA2UniConfig(
            text_config=text_config,
            vision_config=sub_configs["vision_config"],
            vq_config=sub_configs["vq_config"],
            image_token_offset=original.get("image_token_offset"),
            **ids,
        )
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"{image_config_file} with {src / 'config.json'}: {exc}") from None
    found = {field: value for field, value in ids.items() if value is not None}
    if found:
        log("image ids: " + ", ".join(f"{k}={v}" for k, v in found.items()))
    for field, token in UNI_SPECIAL_TOKENS.items():
        if ids[field] is None:
            value = getattr(config, field)
            outcome = f"the released id {value} is used" if value is not None else f"{field} stays None"
            log(f"note: the tokenizer has no {token}; {outcome}")
    config.architectures = ["LLaDA2UniForConditionalGeneration"]
    return config


def plan_image_tokenizer_weights(source_info: dict, expected: dict, requested_dtype, label: str):
    """Map the image tokenizer's tensors onto `expected` ({name: shape} of the composite's `visual.*` / `vqmodel.*`).

    Returns the `TargetTensor`s in `expected` order. Raises `ConversionError` naming every key with another prefix,
    every key that maps to nothing, every target left unfilled and every shape mismatch.
    """
    foreign = sorted(key for key in source_info if not key.startswith(tuple(IMAGE_PREFIXES)))
    if foreign:
        raise ConversionError(f"{label} has tensors outside {' / '.join(IMAGE_PREFIXES)}: {_short_list(foreign)}")
    return plan_tensors(source_info, expected, requested_dtype, label, "the vision model / VQ model", IMAGE_PREFIXES)


def build_image_processor(folder: Path, vision_config, log):
    """Our `LLaDA2UniImageProcessor` from the original `preprocessor_config.json` (GLM-Image style).

    Carried over: patch_size, image_mean / image_std, rescale_factor, do_rescale, do_normalize. `merge_size` is
    forced to 1 (anything else scrambles the row-major token order). The resizing settings are ours: the original
    processor never resizes, its callers do, which our processor's `mode`s reproduce.
    """
    from transformers_llada_uni import LLaDA2UniImageProcessor

    config_file = folder / "preprocessor_config.json"
    if config_file.is_file():
        original = _read_json(config_file)
    else:
        log(f"note: no preprocessor_config.json in {folder}; the image processor gets the released values "
            "(mean = std = 0.5, rescale 1/255)")
        original = {}
    kwargs = {key: original[key] for key in PROCESSOR_KEYS if original.get(key) is not None}
    kwargs.setdefault("patch_size", vision_config.patch_size)
    if kwargs["patch_size"] != vision_config.patch_size:
        raise ConversionError(f"{config_file}: patch_size {kwargs['patch_size']} differs from the vision encoder's "
                              f"patch_size {vision_config.patch_size}")
    if original.get("temporal_patch_size", 1) != 1:
        raise ConversionError(f"{config_file}: temporal_patch_size must be 1 for still images, got "
                              f"{original['temporal_patch_size']}")
    merge_size = original.get("merge_size", 1)
    if merge_size != 1:
        log(f"warning: {config_file} says merge_size {merge_size}; it is forced to 1 (larger values scramble the "
            "row-major order of the image tokens)")
    try:
        return LLaDA2UniImageProcessor(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"{config_file}: {exc}") from None


def write_image_processor(processor, dst: Path):
    """`save_pretrained` (preprocessor_config.json + our processor's code file) and a read-back check."""
    from transformers_llada_uni import LLaDA2UniImageProcessor

    processor.save_pretrained(str(dst))
    code = Path(dst) / "image_processing_llada2_uni.py"
    written = json.loads((Path(dst) / "preprocessor_config.json").read_text())
    if not code.is_file() or "AutoImageProcessor" not in written.get("auto_map", {}):
        raise ConversionError("the image processor's remote code or auto_map was not written")
    reloaded = LLaDA2UniImageProcessor.from_pretrained(str(dst))
    if reloaded.to_dict() != processor.to_dict():
        raise ConversionError("preprocessor_config.json does not read back to the same image processor")


PROCESSOR_FILES = ("processor_config.json", "chat_template.jinja", "processing_llada2_uni.py",
                   "prompting_llada2_uni.py")


def write_processor(image_processor, config, dst: Path, log):
    """The full `LLaDA2UniProcessor` (tokenizer + image processor + prompt templates) for `AutoProcessor`.

    It is saved into a scratch folder and only its own files are taken over, so the tokenizer files copied from the
    source stay as they are. A tokenizer without the image special tokens gets no processor (with a note).
    """
    import tempfile

    from transformers import PreTrainedTokenizerFast

    from transformers_llada_uni import LLaDA2UniProcessor

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(dst))
        processor = LLaDA2UniProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                       image_token_offset=config.image_token_offset,
                                       codebook_size=config.codebook_size)
    except (OSError, ValueError) as error:
        log(f"note: no processor written (AutoProcessor will not load): {error}")
        return
    with tempfile.TemporaryDirectory(dir=dst) as scratch:
        processor.save_pretrained(scratch)
        for name in PROCESSOR_FILES:
            if not (Path(scratch) / name).is_file():
                raise ConversionError(f"the processor did not write {name}")
            shutil.copyfile(Path(scratch) / name, dst / name)


def convert_uni(src: Path, dst: Path, *, dtype, max_bytes: int, log):
    """Write the converted composite (LLM + image tokenizer + image processor) into the empty folder `dst`."""
    from transformers_llada_uni import LLaDA2UniForConditionalGeneration

    text_config = build_config(src, log)
    config = build_uni_config(src, text_config, log)
    image_dir = src / IMAGE_TOKENIZER_DIR
    processor = build_image_processor(image_dir, config.vision_config, log)
    weights_name = image_tokenizer_weights(image_dir)
    label = f"{IMAGE_TOKENIZER_DIR}/{weights_name}"
    with SourceCheckpoint(src) as raw_llm_source, SourceCheckpoint(image_dir, weights_name) as image_source:
        llm_source = prepare_llm_fp8(text_config, raw_llm_source, dtype, log)  # may set text_config.experts_fp8
        expected = expected_llm_tensors(config, LLaDA2UniForConditionalGeneration)
        image_expected = {k: v for k, v in expected.items() if k.startswith(tuple(IMAGE_PREFIXES.values()))}
        llm_expected = {k: v for k, v in expected.items() if k not in image_expected}
        llm_targets = plan_llm(llm_source, llm_expected, dtype, log)
        image_targets = plan_image_tokenizer_weights(image_source.info, image_expected, dtype, label)
        planned = plan_weights([(llm_targets, llm_source), (image_targets, image_source)])
        ordered = {name: planned[name] for name in expected if name in planned}  # the model's own order
        config.dtype = text_config.dtype = dominant_dtype(llm_targets + image_targets)
        log(f"image tokenizer: {len(image_targets)} tensors from {label} "
            f"({', '.join(f'{a}* -> {b}*' for a, b in IMAGE_PREFIXES.items())})")
        files, written = write_weights(dst, ordered, max_bytes, log)
    finish_folder(config, src, dst, log, LLaDA2UniForConditionalGeneration)
    write_image_processor(processor, dst)
    write_processor(processor, config, dst, log)
    check_written(dst, written, max_bytes)
    return files


def verify_uni(folder: Path, log):
    """Load the written folder with `LLaDA2UniForConditionalGeneration.from_pretrained`; a short text forward must
    give finite logits and one blank patch must tokenize to a code of the codebook."""
    from transformers_llada_uni import LLaDA2UniForConditionalGeneration, LLaDA2UniImageProcessor

    model = load_for_verify(folder, LLaDA2UniForConditionalGeneration)
    check_forward(model, log)
    from PIL import Image

    processor = LLaDA2UniImageProcessor.from_pretrained(str(folder))
    side = processor.patch_size
    inputs = processor(images=Image.new("RGB", (side, side), (255, 255, 255)), do_resize=False)
    tokens = model.get_image_tokens(inputs["pixel_values"], inputs["image_grid_thw"])
    if tokens.shape != (1,) or not 0 <= int(tokens[0]) < model.config.codebook_size:
        raise ConversionError(f"--verify: one image patch gave the image tokens {tokens.tolist()}")
    log("verified: one image patch tokenizes to a code of the codebook")
