"""Convert an original LLaDA2 / LLaDA2.0-Uni snapshot into this project's transformers layout.

    python conversion/convert_llada2_uni_to_hf.py --original /path/to/LLaDA2.0-Uni --output /path/to/converted

A LLaDA2.0-Uni root (it has `image_tokenizer/`) becomes one `LLaDA2UniForConditionalGeneration` folder (LLM + image
tokenizer + image processor); a text-only LLaDA2 folder (or `--components llm`) becomes a `LLaDA2MoeForCausalLM`
folder. Either loads with `AutoModel.from_pretrained(out, trust_remote_code=True)` without this package, or with the
package's classes. The pixel side of a Uni root (SigVQ embedding, decoders, VAE) becomes diffusers subfolders beside
it (named in `diffusers_llada_uni/hub_layout.py`) listed in `model_index.json`.
Everything is written to a temporary folder next to the output, checked, and only then moved into place: a failed
run leaves nothing behind. See docs/conversion.md.
"""

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `conversion.*` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from conversion.checkpoint_io import ConversionError, exit_status, parse_size  # noqa: E402
from conversion.hub_source import fetch_original, looks_like_repo_id  # noqa: E402
from conversion.decoder_checkpoint import (  # noqa: E402
    PIXEL_COMPONENTS,
    plan_pixel,
    verify_pixel,
    write_index,
    write_pixel,
)
from conversion.llm_checkpoint import convert_llm, verify_llm  # noqa: E402
from conversion.original_layout import IMAGE_TOKENIZER_DIR, ORIGINAL_PIXEL_PATHS  # noqa: E402
from conversion.staging import check_paths, staged_output  # noqa: E402
from conversion.uni_checkpoint import convert_uni, verify_uni  # noqa: E402

DTYPES = {"keep": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
          "float32": torch.float32}

# What `--components` can select: name -> the path (relative to --original) it needs. The LLM is always required;
# adding the image tokenizer turns the output into the composite LLaDA2UniForConditionalGeneration; the others are
# the pixel side, written as diffusers subfolders.
COMPONENTS = {"llm": "config.json", "image_tokenizer": IMAGE_TOKENIZER_DIR,
              **{name: ORIGINAL_PIXEL_PATHS[component] for name, component in PIXEL_COMPONENTS.items()}}


def _requested(components):
    if isinstance(components, str):
        return [part.strip() for part in components.split(",") if part.strip()]
    return list(components) if components else None


def write_card(original: Path, staging: Path, source_name: str, components):
    """The model card: Hub metadata (license and tags of the source's card) and snippets for both loaders."""
    from diffusers_llada_uni.model_card import card_metadata, write_model_card

    carried = card_metadata(original / "README.md")
    base_model = source_name if looks_like_repo_id(source_name) else carried.get("base_model")
    kind = "uni" if "image_tokenizer" in components else "llm"
    write_model_card(staging, base_model=base_model, license=carried.get("license"), tags=carried.get("tags", ()),
                     kind=kind, overwrite=True)


def _resolve_components(original: Path, components):
    """The selected components (default: every one the source has), checked against the source."""
    available = [name for name, path in COMPONENTS.items() if (original / path).exists()]
    if "llm" not in available:
        raise ConversionError(f"no {COMPONENTS['llm']} in {original}")
    if components is None:
        # Without the image tokenizer the root is the text-only LLM, which makes no image tokens for a decoder: the
        # pixel side is then converted only on request.
        return [name for name in available if name not in PIXEL_COMPONENTS or "image_tokenizer" in available]
    if isinstance(components, str):
        components = [part.strip() for part in components.split(",") if part.strip()]
    selected = list(dict.fromkeys(components))
    unknown = [name for name in selected if name not in COMPONENTS]
    if unknown or not selected:
        raise ConversionError(f"--components must be a comma-separated subset of {', '.join(COMPONENTS)}; "
                              f"got {', '.join(unknown) or 'nothing'}")
    if "llm" not in selected:
        raise ConversionError("--components must include llm: the root model is always written (the image "
                              "tokenizer joins it as the composite model)")
    absent = [name for name in selected if name not in available]
    if absent:
        raise ConversionError(f"--components {', '.join(absent)}: {original} has no "
                              + ", ".join(COMPONENTS[name] for name in absent))
    return selected


def _convert_components(original: Path, staging: Path, options: dict, log):
    components, dtype, max_bytes = options["components"], options["dtype"], options["max_bytes"]
    composite = "image_tokenizer" in components
    with ExitStack() as sources:
        # The pixel parts are planned before the root is written, so that a bad one stops the run early.
        pixel_parts = plan_pixel(original, components, dtype, log, sources)
        if composite:
            convert_uni(original, staging, dtype=dtype, max_bytes=max_bytes, log=log)
        else:
            convert_llm(original, staging, dtype=dtype, max_bytes=max_bytes, log=log)
        written = write_pixel(pixel_parts, staging, max_bytes, log)
    write_index(staging, composite, written, log)
    if options["verify"]:
        (verify_uni if composite else verify_llm)(staging, log)
        verify_pixel(staging, pixel_parts, log)


def _resolve_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConversionError(f"--dtype must be a floating dtype, got {dtype}")
        return dtype
    key = str(dtype).lower()
    if key not in DTYPES:
        raise ConversionError(f"--dtype must be one of bf16, fp32, keep; got {dtype!r}")
    return DTYPES[key]


def convert(original, output, *, dtype="keep", max_shard_size="5GB", overwrite=False, verify=False, quiet=False,
            components=None, hub_kwargs=None):
    """Convert the original checkpoint folder `original` into `output`; returns the output `Path`.

    Args:
        original: a LLaDA2 snapshot (config.json, safetensors weights, tokenizer files) or a LLaDA2.0-Uni root (its
            LLM and image tokenizer are converted into one composite model; its SigVQ embedding, decoders and VAE
            into diffusers subfolders beside it); a folder or a Hub repo id (only the files the selected components
            need are fetched; `hub_kwargs`: revision, cache_dir, token, local_files_only).
        output: the folder to create. It must not exist unless `overwrite=True`.
        dtype: "bf16", "fp32" or "keep" (as stored) for the floating weights of every part; `expert_bias` always
            stays float32.
        max_shard_size: the largest safetensors shard, e.g. "5GB", "200MB" (a single bigger tensor gets its own).
        overwrite: replace an existing `output` (only after the new folder is complete and verified).
        verify: also load the result with `from_pretrained` and run a short forward pass (and, for the composite,
            tokenize one image patch; for each pixel part, one tiny forward).
        quiet: print nothing.
        components: a list (or comma-separated string) out of `COMPONENTS` ("llm", "image_tokenizer",
            "semantic_embedder", "decoder", "decoder_turbo", "vae"); default: every one the source has (the pixel
            parts only along with the image tokenizer). `["llm"]` on a Uni root writes the text-only
            `LLaDA2MoeForCausalLM`; `["llm", "image_tokenizer"]` the composite alone, with no model_index.json.

    Raises `ConversionError` with a one-line reason; then neither `output` nor a temporary folder is left behind.
    """
    log = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    source_name = str(original)
    if looks_like_repo_id(source_name):
        selected = _requested(components) or list(COMPONENTS)
        original = fetch_original(source_name, [COMPONENTS[name] for name in selected if name != "llm"],
                                  **(hub_kwargs or {}))
    original = Path(original).expanduser().resolve()
    output = Path(os.path.abspath(Path(output).expanduser()))
    options = {"dtype": _resolve_dtype(dtype), "max_bytes": parse_size(max_shard_size), "verify": verify}
    check_paths(original, "--original", output, overwrite)
    options["components"] = _resolve_components(original, components)

    with staged_output(output, "converting") as staging:
        skipped = [path for name, path in COMPONENTS.items()
                   if name not in options["components"] and (original / path).exists()]
        skipped = [path for path in skipped if not any(path.startswith(s + "/") for s in skipped)]
        if skipped:
            log(f"note: {original} is a LLaDA2.0-Uni folder; not converted (yet): "
                f"{', '.join(name + '/' if (original / name).is_dir() else name for name in skipped)} "
                "(not selected; see --components)")
        log(f"converting {source_name} -> {output} ({' + '.join(options['components'])})")
        _convert_components(original, staging, options, log)
        write_card(original, staging, source_name, options["components"])
    log(f"done: {output}")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert an original LLaDA2 / LLaDA2.0-Uni checkpoint to this project's transformers / diffusers "
                    "layout.",
    )
    parser.add_argument("--original", required=True,
                        help="folder of the original snapshot (config.json + weights), or its Hub repo id "
                             "(e.g. inclusionAI/LLaDA2.0-Uni; only the files needed are downloaded)")
    parser.add_argument("--revision", default=None, help="Hub revision of --original (a branch, tag or commit)")
    parser.add_argument("--output", required=True, help="folder to create")
    parser.add_argument("--dtype", default="keep", choices=["bf16", "fp32", "keep"],
                        help="dtype of the floating weights (default: keep as stored; expert_bias stays float32)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest weight shard, e.g. 5GB, 200MB (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--verify", action="store_true",
                        help="also load every written part and run a short forward pass before moving it into place")
    parser.add_argument("--components", default=None,
                        help=f"comma-separated subset of {','.join(COMPONENTS)} to convert (default: all the source "
                             "has; llm alone gives the text-only model; llm,image_tokenizer the composite without "
                             "the pixel side)")
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)
    return exit_status(lambda: convert(args.original, args.output, dtype=args.dtype,
                                       max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                       verify=args.verify, quiet=args.quiet, components=args.components,
                                       hub_kwargs={"revision": args.revision}))


if __name__ == "__main__":
    sys.exit(main())
