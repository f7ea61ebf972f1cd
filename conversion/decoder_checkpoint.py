"""The pixel side of a LLaDA2.0-Uni snapshot -> diffusers subfolders beside the converted root.

    image_tokenizer/sigvq_embedding.pt -> semantic_embedder  LLaDA2UniSemanticEmbedder, same tensor names
    decoder/, decoder-turbo/           -> transformer, transformer_turbo  diffusers ZImageTransformer2DModel:
                                          semantic_embedder.* -> cap_embedder.*, every other key verbatim
    vae/                               -> vae  diffusers AutoencoderKL, keys verbatim
    (and the schedulers of the decoders written, and model_index.json)

Sources are `original_layout.ORIGINAL_PIXEL_PATHS`; each pipeline component is written to its subfolder in
`diffusers_llada_uni.hub_layout.SUBFOLDERS`.

Every part is planned first (config read, source keys and shapes checked against the class built on the meta
device) so that a bad part stops the run before anything big is written; then each is written as
`config.json` + `diffusion_pytorch_model*.safetensors`, one tensor read at a time, and its headers re-read.
"""

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from conversion.checkpoint_io import (
    ConversionError,
    SourceCheckpoint,
    _short_list,
    check_written,
    dtype_name,
    index_name,
    plan_shards,
    write_shards,
)
from conversion.llm_checkpoint import _read_json
from conversion.llm_weights import build_tensor, dominant_dtype, plan_tensors
from conversion.original_layout import IMAGE_TOKENIZER_DIR, ORIGINAL_PIXEL_PATHS

# --components name -> pipeline component. The names are the command line's, kept apart from the folder names so
# that a new folder layout does not rename a command-line option.
PIXEL_COMPONENTS = {
    "semantic_embedder": "semantic_embedder",
    "decoder": "transformer",
    "decoder_turbo": "transformer_turbo",
    "vae": "vae",
}
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# The release's decode.py opens model.safetensors, the Hub card lists decoder_model.safetensors, a diffusers export
# writes diffusion_pytorch_model.safetensors: any one of them (or its sharded index) is accepted.
DECODER_WEIGHTS_NAMES = ("model.safetensors", DIFFUSERS_WEIGHTS_NAME, "decoder_model.safetensors")
# The original decoder is diffusers' Z-Image with cap_embedder renamed; nothing else differs.
DECODER_RENAMES = {"semantic_embedder.": "cap_embedder."}
# decode.py overrides axes_lens whatever the config says: RoPE axis 0 must reach past the longest caption (4hw codes).
FORCED_AXES_LENS = [32768, 1024, 1024]
SIGVQ_KEYS = ("prior_token_embedding.weight", "prior_projector.net.0.proj.weight", "prior_projector.net.0.proj.bias",
              "prior_projector.net.2.weight", "prior_projector.net.2.bias")


@dataclass
class PixelPart:
    """One planned diffusers model folder: what to write and where the tensors come from."""

    pipeline_name: str  # the component name in hub_layout / model_index.json
    label: str  # the source, for messages
    model_class: type
    config: dict  # written as config.json
    targets: list  # TargetTensor copies, in the model's order
    source: object  # `.get(key)` -> tensor: a SourceCheckpoint, or the SigVQ state dict
    renames: dict = None  # source key prefix -> ours

    @property
    def dtype(self) -> torch.dtype:
        return dominant_dtype(self.targets)


def plan_pixel(src: Path, components, dtype, log, stack):
    """Plan the selected pixel parts of `src`; the opened sources are registered on the ExitStack `stack`."""
    parts = {}
    if "semantic_embedder" in components:
        parts["semantic_embedder"] = _plan_semantic_embedder(src, dtype)
        if "image_tokenizer" in components:
            _check_codebook(src, parts["semantic_embedder"])
    for name in ("decoder", "decoder_turbo"):
        if name in components:
            parts[name] = _plan_decoder(src, name, dtype, log, stack)
    if "vae" in components:
        parts["vae"] = _plan_vae(src, dtype, log, stack)
    embedder = parts.get("semantic_embedder")
    for name in ("decoder", "decoder_turbo"):
        if embedder is not None and name in parts:
            width, cap_dim = embedder.config["embedding_dim"], parts[name].config.get("cap_feat_dim")
            if cap_dim != width:
                raise ConversionError(f"{parts[name].label}: cap_feat_dim {cap_dim} differs from the width {width} "
                                      f"of {embedder.label} (the features it feeds the decoder)")
    return list(parts.values())


def _plan_semantic_embedder(src: Path, dtype) -> PixelPart:
    from diffusers_llada_uni.semantic_embedder import LLaDA2UniSemanticEmbedder

    label = ORIGINAL_PIXEL_PATHS["semantic_embedder"]
    path = src / label
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and OS errors alike mean the same to the user
        if "Weights only load failed" in str(exc):  # torch's own text suggests weights_only=False: never here
            reason = "it holds objects other than tensors"
        else:
            reason = f"truncated, or not a torch checkpoint? ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        raise ConversionError(f"cannot read {path} with torch.load(weights_only=True): {reason}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} must hold a dict of tensors ({', '.join(SIGVQ_KEYS)})")
    table = state.get(SIGVQ_KEYS[0])
    if table is None or table.dim() != 2:
        shape = "absent" if table is None else f"of shape {list(table.shape)}"
        raise ConversionError(f"{label}: {SIGVQ_KEYS[0]} must be a [vocab_size, width] matrix; it is {shape}")
    vocab_size, width = table.shape
    with torch.device("meta"):
        model = LLaDA2UniSemanticEmbedder(vocab_size=vocab_size, embedding_dim=width)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    info = {key: (tuple(t.shape), t.dtype) for key, t in state.items()}
    targets = plan_tensors(info, expected, dtype, label, "LLaDA2UniSemanticEmbedder")
    config = json.loads(model.to_json_string())  # the class's own config machinery: from_pretrained reads it back
    return PixelPart("semantic_embedder", label, LLaDA2UniSemanticEmbedder, config, targets, state)


def _check_codebook(src: Path, embedder: PixelPart):
    """The embedding table is indexed by the image tokenizer's codes, so both must count the same codes."""
    config_file = src / IMAGE_TOKENIZER_DIR / "config.json"
    vq_config = _read_json(config_file).get("vq_config") if config_file.is_file() else None
    codes = vq_config.get("num_embeddings") if isinstance(vq_config, dict) else None  # else the root's check speaks
    vocab_size = embedder.config["vocab_size"]
    if codes is not None and codes != vocab_size:
        raise ConversionError(f"{embedder.label} embeds {vocab_size} codes but {config_file} has a codebook of "
                              f"{codes} (vq_config.num_embeddings)")


def _plan_decoder(src: Path, name: str, dtype, log, stack) -> PixelPart:
    from diffusers import ZImageTransformer2DModel

    pipeline_name = PIXEL_COMPONENTS[name]
    folder_name = ORIGINAL_PIXEL_PATHS[pipeline_name]
    folder = src / folder_name
    config = _read_config(folder, ZImageTransformer2DModel)
    if config.get("cap_feat_dim") is None:  # diffusers' default (2560, stock Z-Image) is never this model's
        raise ConversionError(f"{folder / 'config.json'} has no cap_feat_dim (the width of the SigVQ features)")
    if list(config.get("axes_lens") or []) != FORCED_AXES_LENS:
        log(f"note: {folder_name}/config.json says axes_lens {config.get('axes_lens')}; it is set to "
            f"{FORCED_AXES_LENS}, as the original decode.py forces it")
        config["axes_lens"] = list(FORCED_AXES_LENS)
    expected = meta_state_shapes(ZImageTransformer2DModel, config, folder / "config.json", log)
    weights_name = _weights_name(folder, DECODER_WEIGHTS_NAMES)
    source = stack.enter_context(SourceCheckpoint(folder, weights_name=weights_name))
    label = f"{folder_name}/{weights_name}"
    targets = plan_tensors(source.info, expected, dtype, label, "ZImageTransformer2DModel", DECODER_RENAMES)
    return PixelPart(pipeline_name, label, ZImageTransformer2DModel, config, targets, source, DECODER_RENAMES)


def _plan_vae(src: Path, dtype, log, stack) -> PixelPart:
    from diffusers import AutoencoderKL

    folder = src / ORIGINAL_PIXEL_PATHS["vae"]
    config = _read_config(folder, AutoencoderKL)
    absent = [key for key in ("scaling_factor", "shift_factor") if config.get(key) is None]
    if absent:
        raise ConversionError(f"{folder / 'config.json'} has no {' / '.join(absent)}: the decoder's latents cannot "
                              "be mapped to the VAE without them")
    expected = meta_state_shapes(AutoencoderKL, config, folder / "config.json", log)
    weights_name = _weights_name(folder, (DIFFUSERS_WEIGHTS_NAME,))
    source = stack.enter_context(SourceCheckpoint(folder, weights_name=weights_name))
    label = f"{folder.name}/{weights_name}"
    targets = plan_tensors(source.info, expected, dtype, label, "AutoencoderKL")
    return PixelPart("vae", label, AutoencoderKL, config, targets, source)


def _read_config(folder: Path, model_class) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"no config.json in {folder}")
    config = _read_json(config_file)
    if not isinstance(config, dict):
        raise ConversionError(f"{config_file} must hold a JSON object")
    class_name = config.setdefault("_class_name", model_class.__name__)
    if class_name != model_class.__name__:
        raise ConversionError(f"{config_file} declares {class_name!r}, expected {model_class.__name__!r}")
    return config


def meta_state_shapes(model_class, config: dict, config_file: Path, log) -> dict:
    """{name: shape} of `model_class(**config)`'s state dict, built on the meta device (no memory)."""
    accepted = set(inspect.signature(model_class.__init__).parameters) - {"self"}
    ignored = sorted(key for key in config if key not in accepted and not key.startswith("_"))
    if ignored:
        log(f"note: {config_file} keys unknown to this diffusers' {model_class.__name__} (ignored when loading): "
            f"{', '.join(ignored)}")
    try:
        with torch.device("meta"):
            model = model_class(**{key: value for key, value in config.items() if key in accepted})
    except Exception as exc:  # the classes validate their config with asserts, ValueErrors and shape errors alike
        reason = " ".join(str(exc).split())
        raise ConversionError(f"{config_file}: cannot build {model_class.__name__} from it ({type(exc).__name__}"
                              f"{': ' + reason if reason else ': the settings do not fit together'})") from None
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _weights_name(folder: Path, names) -> str:
    """The one accepted weights name (single file or sharded index) that `folder` holds."""
    if not folder.is_dir():
        raise ConversionError(f"{folder} does not exist")
    found = [name for name in names if (folder / name).is_file() or (folder / index_name(name)).is_file()]
    if len(found) > 1:
        raise ConversionError(f"{folder} holds weights under several names ({', '.join(found)}); keep one")
    if not found:
        raise ConversionError(f"no {' or '.join(names)} (or its .index.json) in {folder}")
    return found[0]


def write_pixel(parts, dst: Path, max_bytes: int, log) -> set:
    """Write the planned parts (and the schedulers of the decoders) into `dst`; returns the pipeline components."""
    from diffusers_llada_uni.hub_layout import DECODERS, SUBFOLDERS, default_scheduler

    written = set()
    for part in parts:
        folder = dst / SUBFOLDERS[part.pipeline_name]
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(part.config, indent=2) + "\n")
        by_name = {target.name: target for target in part.targets}
        total = sum(target.nbytes for target in part.targets)
        shards = plan_shards([(target.name, target.nbytes) for target in part.targets], max_bytes)
        write_shards(folder, shards, lambda name: build_tensor(by_name[name], part.source), total,
                     DIFFUSERS_WEIGHTS_NAME)
        check_written(folder, {t.name: (t.shape, t.dtype) for t in part.targets}, max_bytes, DIFFUSERS_WEIGHTS_NAME)
        renamed = "".join(f", {old}* -> {new}*" for old, new in (part.renames or {}).items())
        log(f"{part.label} -> {folder.name}/: {len(part.targets)} tensors ({total / 1e6:.1f} MB, "
            f"{dtype_name(part.dtype)}) in {len(shards)} file(s){renamed}")
        part.source = None  # the SigVQ dict can go now: --verify reads the written files
        written.add(part.pipeline_name)
    for decoder, (transformer, scheduler) in DECODERS.items():
        if transformer in written:
            default_scheduler(decoder).save_pretrained(str(dst / SUBFOLDERS[scheduler]))
            written.add(scheduler)
    return written


def write_index(dst: Path, composite: bool, written: set, log):
    """model_index.json listing what this run wrote; only with a pixel part (else the root is a plain transformers
    folder, as before). The root counts as the pipeline's `mllm` only when it is the composite model."""
    from diffusers_llada_uni.hub_files import write_pipeline_files
    from diffusers_llada_uni.hub_layout import MODEL_INDEX, write_model_index

    if not written:
        return
    present = set(written)
    if composite:
        present.add("mllm")
        if (dst / "processor_config.json").is_file():
            present.add("processor")
        write_pipeline_files(dst, present)  # the code files diffusers loads the folder with, and model_index.json
    else:
        write_model_index(dst, present)
    log(f"{MODEL_INDEX}: {', '.join(sorted(present))}")


def verify_pixel(dst: Path, parts, log):
    """Load every written part with `from_pretrained` (strictly) and run one tiny forward: outputs must be finite."""
    from diffusers_llada_uni.hub_layout import SUBFOLDERS

    for part in parts:
        subfolder = SUBFOLDERS[part.pipeline_name]
        dtype = torch.float32 if part.dtype == torch.float16 else part.dtype  # never compute in float16
        try:
            model, info = part.model_class.from_pretrained(str(dst), subfolder=subfolder, torch_dtype=dtype,
                                                           output_loading_info=True)
        except Exception as exc:
            raise ConversionError(f"--verify: loading {subfolder}/ failed: {type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())}") from None
        problems = [f"{kind}: {_short_list(sorted(map(str, info.get(kind) or ())))}"
                    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
        if problems:
            raise ConversionError(f"--verify: {subfolder}/ does not load cleanly ({'; '.join(problems)})")
        with torch.no_grad():
            what, output = _tiny_forward(part.pipeline_name, model.eval(), dtype)
        if not torch.isfinite(output).all():
            raise ConversionError(f"--verify: {subfolder}/: {what} gives {int((~torch.isfinite(output)).sum())} "
                                  "non-finite values")
        log(f"verified: {subfolder}/ loads cleanly, {what} gives finite values")
        del model


def _tiny_forward(pipeline_name: str, model, dtype):
    generator = torch.Generator().manual_seed(0)
    config = model.config
    if pipeline_name == "semantic_embedder":
        return "a 1x1 code grid", model(torch.zeros(1, 1, dtype=torch.long), (1, 1))
    if pipeline_name != "vae":  # a Z-Image decoder: a 2x2-token latent and a 4-token caption
        side = 2 * config.all_patch_size[0]
        latent = torch.randn(config.in_channels, config.all_f_patch_size[0], side, side, generator=generator)
        caption = torch.randn(4, config.cap_feat_dim, generator=generator)
        output = model([latent.to(dtype)], torch.tensor([0.5]), [caption.to(dtype)],
                       patch_size=config.all_patch_size[0], f_patch_size=config.all_f_patch_size[0]).sample[0]
        return "a 2x2-token forward", output
    latent = torch.randn(1, config.latent_channels, 2, 2, generator=generator)
    return "decoding a 2x2 latent", model.decode(latent.to(dtype)).sample
