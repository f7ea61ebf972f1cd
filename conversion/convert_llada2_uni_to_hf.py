"""Convert an original LLaDA2 / LLaDA2.0-Uni snapshot into this project's transformers layout.

    python conversion/convert_llada2_uni_to_hf.py --original /path/to/LLaDA2.0-Uni --output /path/to/converted

The output folder loads with `LLaDA2MoeForCausalLM.from_pretrained(out)` (plugin installed) or with
`AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` (plugin not installed). Everything is written to
a temporary folder next to the output, checked, and only then moved into place: a failed run leaves nothing behind.
See docs/conversion.md.
"""

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `conversion.*` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from conversion.checkpoint_io import ConversionError, parse_size  # noqa: E402
from conversion.llm_checkpoint import convert_llm, verify_llm  # noqa: E402

DTYPES = {"keep": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
          "float32": torch.float32}

# Sub-folders of a LLaDA2.0-Uni snapshot besides the LLM at its root. Their converters come later; each will be a
# `COMPONENTS` entry (name -> function(src_root, dst_root, options)) selected with `--components`.
UNI_SUBFOLDERS = ("image_tokenizer", "decoder", "decoder-turbo", "vae")


def _convert_llm_component(original: Path, staging: Path, options: dict, log):
    files = convert_llm(original, staging, dtype=options["dtype"], max_bytes=options["max_bytes"], log=log)
    if options["verify"]:
        verify_llm(staging, log)
    return files


COMPONENTS = {"llm": _convert_llm_component}


def _resolve_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConversionError(f"--dtype must be a floating dtype, got {dtype}")
        return dtype
    key = str(dtype).lower()
    if key not in DTYPES:
        raise ConversionError(f"--dtype must be one of bf16, fp32, keep; got {dtype!r}")
    return DTYPES[key]


def _check_paths(original: Path, output: Path, overwrite: bool):
    if not original.exists():
        raise ConversionError(f"--original {original} does not exist")
    if not original.is_dir():
        raise ConversionError(f"--original {original} is not a folder")
    if output == original or output in original.parents or original in output.parents:
        raise ConversionError(f"--output {output} must not be, contain or lie inside --original {original}")
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise ConversionError(f"--output {output} already exists (pass --overwrite to replace it)")
        if not output.is_dir():
            raise ConversionError(f"--output {output} exists and is not a folder; remove it yourself")


def _fix_permissions(folder: Path):
    """Give the staging folder (created 0700 by mkdtemp) and its files the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _move_into_place(staging: Path, output: Path):
    """Rename the finished staging folder to `output`, replacing an existing output only once the new one is ready."""
    if not output.exists():
        os.replace(staging, output)
        return
    backup = output.parent / f".{output.name}.replaced-{uuid.uuid4().hex[:8]}"
    os.replace(output, backup)
    try:
        os.replace(staging, output)
    except BaseException:
        os.replace(backup, output)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def convert(original, output, *, dtype="keep", max_shard_size="5GB", overwrite=False, verify=False, quiet=False):
    """Convert the original checkpoint folder `original` into `output`; returns the output `Path`.

    Args:
        original: a LLaDA2 snapshot (config.json, safetensors weights, tokenizer files) or a LLaDA2.0-Uni root (its
            LLM part is converted; the image tokenizer, decoders and VAE are not converted yet).
        output: the folder to create. It must not exist unless `overwrite=True`.
        dtype: "bf16", "fp32" or "keep" (as stored) for the floating weights; `expert_bias` always stays float32.
        max_shard_size: the largest safetensors shard, e.g. "5GB", "200MB" (a single bigger tensor gets its own).
        overwrite: replace an existing `output` (only after the new folder is complete and verified).
        verify: also load the result with `LLaDA2MoeForCausalLM.from_pretrained` and run a short forward pass.
        quiet: print nothing.

    Raises `ConversionError` with a one-line reason; then neither `output` nor a temporary folder is left behind.
    """
    log = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    original = Path(original).expanduser().resolve()
    output = Path(os.path.abspath(Path(output).expanduser()))
    options = {"dtype": _resolve_dtype(dtype), "max_bytes": parse_size(max_shard_size), "verify": verify}
    _check_paths(original, output, overwrite)

    created_parents = [p for p in reversed(output.parents) if not p.exists()]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
    try:
        extra = [name for name in UNI_SUBFOLDERS if (original / name).is_dir()]
        if extra:
            log(f"note: {original} is a LLaDA2.0-Uni folder; only its LLM is converted, not yet "
                f"{', '.join(name + '/' for name in extra)}")
        log(f"converting {original} -> {output}")
        COMPONENTS["llm"](original, staging, options, log)
        _fix_permissions(staging)
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created_parents):
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    log(f"done: {output}")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert an original LLaDA2 / LLaDA2.0-Uni checkpoint to this project's transformers layout.",
    )
    parser.add_argument("--original", required=True, help="folder of the original snapshot (config.json + weights)")
    parser.add_argument("--output", required=True, help="folder to create")
    parser.add_argument("--dtype", default="keep", choices=["bf16", "fp32", "keep"],
                        help="dtype of the floating weights (default: keep as stored; expert_bias stays float32)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest weight shard, e.g. 5GB, 200MB (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--verify", action="store_true",
                        help="also load the result and run a short forward pass before moving it into place")
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)
    try:
        convert(args.original, args.output, dtype=args.dtype, max_shard_size=args.max_shard_size,
                overwrite=args.overwrite, verify=args.verify, quiet=args.quiet)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure still gets a one-line reason (and the cleanup above)
        message = " ".join(str(exc).split())
        print(f"error: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
