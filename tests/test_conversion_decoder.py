"""conversion/decoder_checkpoint.py: the pixel side of a LLaDA2.0-Uni root (SigVQ embedding, decoders, VAE) written as
diffusers subfolders beside the converted root, with schedulers and model_index.json.

Every case runs `convert()` in-process on the public parity checkpoint or on a copy of it edited with safetensors /
torch.save. The bad inputs all fail while the pixel parts are planned, before anything is written, so they are cheap.
"""

import json
import os
import re
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel
from safetensors.torch import load_file, save_file

from conversion.checkpoint_io import ConversionError
from conversion.convert_llada2_uni_to_hf import convert, main
from diffusers_llada_uni.hub_layout import CODE_FILES, ROOT_CODE_FILES, SCHEDULER_SETTINGS, SUBFOLDERS
from diffusers_llada_uni.scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler
from diffusers_llada_uni.semantic_embedder import LLaDA2UniSemanticEmbedder

# Output folders come from the layout table, so that renaming one there needs no change here; the source folders are
# the release's and are spelled out.
PIXEL_FOLDERS = set(SUBFOLDERS.values()) - {"."}
MODEL_FOLDERS = [SUBFOLDERS[name] for name in ("semantic_embedder", "transformer", "transformer_turbo", "vae")]
NORMAL, EMBEDDER, VAE = SUBFOLDERS["transformer"], SUBFOLDERS["semantic_embedder"], SUBFOLDERS["vae"]
DECODERS = {NORMAL: "decoder", SUBFOLDERS["transformer_turbo"]: "decoder-turbo"}  # output folder -> source folder
SIGVQ = "image_tokenizer/sigvq_embedding.pt"


@pytest.fixture(scope="module")
def source(parity_checkpoint):
    return parity_checkpoint


def _copy(source, folder, skip=()):
    """A writable copy of the parity checkpoint (the fixtures are read-only), without the top-level names in `skip`."""
    shutil.copytree(source, folder, copy_function=shutil.copyfile,
                    ignore=lambda d, names: [n for n in names if d == str(source) and n in skip])
    for root, _, _ in os.walk(folder):
        os.chmod(root, 0o755)
    return folder


def _renamed(tensors):
    return {("cap_embedder." + k[len("semantic_embedder."):] if k.startswith("semantic_embedder.") else k): v
            for k, v in tensors.items()}


def _folder_tensors(folder):
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def _assert_equal(state, expected):
    assert state.keys() == expected.keys()
    for key, tensor in expected.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key


def _sigvq(source):
    return torch.load(source / SIGVQ, map_location="cpu", weights_only=True)


def test_layout_and_model_index(converted):
    assert PIXEL_FOLDERS <= {p.name for p in converted.iterdir() if p.is_dir()}
    code = {name: [file_name] for name, file_name in CODE_FILES.items()}  # diffusers' custom-component files
    for name in MODEL_FOLDERS:
        assert sorted(p.name for p in (converted / name).iterdir()) == sorted(
            ["config.json", "diffusion_pytorch_model.safetensors", *code.get(name, [])])
    assert not list(converted.glob(".*")) and not (converted / "decoder-turbo").exists()
    index = json.loads((converted / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_llada2_uni", "LLaDA2UniPipeline"] and "_subfolders" not in index
    assert all(index[name][0] is not None for name in SUBFOLDERS), index
    assert index["transformer_turbo"] == ["diffusers", "ZImageTransformer2DModel"]
    assert all((converted / name).is_file() for name in ROOT_CODE_FILES)
    assert "library_name: transformers" in (converted / "README.md").read_text()


@pytest.mark.parametrize("folder", sorted(DECODERS))
def test_decoder_loads_bit_exact(source, converted, folder):
    model, info = ZImageTransformer2DModel.from_pretrained(converted, subfolder=folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    original = load_file(str(source / DECODERS[folder] / "model.safetensors"))
    _assert_equal(model.state_dict(), _renamed(original))
    written = json.loads((converted / folder / "config.json").read_text())
    assert written == json.loads((source / DECODERS[folder] / "config.json").read_text())
    assert written["_diffusers_version"] == "0.37.0.dev0"  # the source's, kept


def test_vae_embedder_and_schedulers_reload(source, converted):
    vae = AutoencoderKL.from_pretrained(converted, subfolder=VAE)
    _assert_equal(vae.state_dict(), load_file(str(source / "vae" / "diffusion_pytorch_model.safetensors")))
    assert vae.config.scaling_factor == 0.3611 and vae.config.shift_factor == 0.1159
    sigvq = _sigvq(source)
    embedder, info = LLaDA2UniSemanticEmbedder.from_pretrained(converted, subfolder=EMBEDDER, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    _assert_equal(embedder.state_dict(), sigvq)
    vocab, width = sigvq["prior_token_embedding.weight"].shape
    assert (embedder.config.vocab_size, embedder.config.embedding_dim, embedder.config.upsample_factor) == (vocab,
                                                                                                            width, 2)
    for decoder, folder in (("normal", SUBFOLDERS["scheduler"]), ("turbo", SUBFOLDERS["scheduler_turbo"])):
        scheduler = LLaDA2UniFlowMatchEulerScheduler.from_pretrained(converted, subfolder=folder)
        assert {k: scheduler.config[k] for k in SCHEDULER_SETTINGS[decoder]} == SCHEDULER_SETTINGS[decoder]


def test_source_names_shards_and_forced_axes_lens(source, converted, tmp_path, capsys):
    """decoder/ named diffusion_pytorch_model.safetensors with other axes_lens, decoder-turbo/ sharded with an index;
    a small --max-shard-size shards the output the diffusers way. Without image_tokenizer the root is the text-only
    LLM, so model_index.json lists no mllm."""
    folder = _copy(source, tmp_path / "orig")
    normal = folder / "decoder"
    (normal / "model.safetensors").rename(normal / "diffusion_pytorch_model.safetensors")
    config = json.loads((normal / "config.json").read_text())
    (normal / "config.json").write_text(json.dumps({**config, "axes_lens": [1024, 512, 512]}))
    turbo = folder / "decoder-turbo"
    tensors = load_file(str(turbo / "model.safetensors"))
    (turbo / "model.safetensors").unlink()
    keys = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((keys[:30], keys[30:])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(turbo / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (turbo / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    out = convert(folder, tmp_path / "out", components="llm,decoder,decoder_turbo", max_shard_size="300KB")
    log = capsys.readouterr().out
    assert f"decoder/diffusion_pytorch_model.safetensors -> {NORMAL}/" in log
    assert "note: decoder/config.json says axes_lens [1024, 512, 512]; it is set to [32768, 1024, 1024]" in log
    assert json.loads((out / NORMAL / "config.json").read_text()) == config
    for name in DECODERS:
        files = sorted(p.name for p in (out / name).glob("*.safetensors"))
        assert len(files) > 2 and all(re.fullmatch(rf"diffusion_pytorch_model-\d{{5}}-of-{len(files):05d}"
                                                   r"\.safetensors", f) for f in files), files
        index = json.loads((out / name / "diffusion_pytorch_model.safetensors.index.json").read_text())
        assert sorted(set(index["weight_map"].values())) == files
        model = ZImageTransformer2DModel.from_pretrained(out, subfolder=name)
        _assert_equal(model.state_dict(), _folder_tensors(converted / name))
    assert {p.name for p in out.iterdir() if p.is_dir()} == {*DECODERS, SUBFOLDERS["scheduler"],
                                                              SUBFOLDERS["scheduler_turbo"]}
    index = json.loads((out / "model_index.json").read_text())
    present = {name for name in SUBFOLDERS if index[name][0] is not None}
    assert present == {"transformer", "transformer_turbo", "scheduler", "scheduler_turbo"}


def test_hub_card_weights_name(source, converted, tmp_path):
    """The Hub card lists decoder/decoder_model.safetensors: that name is read too."""
    folder = _copy(source, tmp_path / "orig")
    (folder / "decoder" / "model.safetensors").rename(folder / "decoder" / "decoder_model.safetensors")
    out = convert(folder, tmp_path / "out", components="llm,decoder", quiet=True)
    assert (out / NORMAL / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (converted / NORMAL / "diffusion_pytorch_model.safetensors").read_bytes()


def test_bf16_applies_to_the_pixel_parts_and_verify(source, tmp_path, capsys):
    out = convert(source, tmp_path / "out", dtype="bf16", verify=True)
    log = capsys.readouterr().out
    for name in MODEL_FOLDERS:
        assert f"verified: {name}/ loads cleanly" in log
    originals = {EMBEDDER: _sigvq(source), VAE: load_file(str(source / "vae" / "diffusion_pytorch_model.safetensors"))}
    originals.update({name: _renamed(load_file(str(source / src / "model.safetensors")))
                      for name, src in DECODERS.items()})
    for name, original in originals.items():
        _assert_equal(_folder_tensors(out / name), {k: v.to(torch.bfloat16) for k, v in original.items()})
    model = ZImageTransformer2DModel.from_pretrained(out, subfolder=NORMAL, torch_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_llm_and_image_tokenizer_only_give_the_old_output(source, converted, tmp_path, capsys):
    out = convert(source, tmp_path / "out", components="llm,image_tokenizer")
    assert f"not converted (yet): {SIGVQ}, decoder/, decoder-turbo/, vae/" in capsys.readouterr().out
    # The composite alone is a plain transformers folder: no model_index.json and no diffusers code files.
    pipeline_files = {"model_index.json", *ROOT_CODE_FILES}
    root_files = sorted(p.name for p in converted.iterdir() if p.is_file() and p.name not in pipeline_files)
    assert sorted(p.name for p in out.iterdir()) == root_files
    assert (out / "config.json").read_bytes() == (converted / "config.json").read_bytes()
    _assert_equal(_folder_tensors(out), _folder_tensors(converted))


def test_text_only_root_leaves_the_pixel_side_by_default(source, tmp_path, capsys):
    folder = _copy(source, tmp_path / "orig", skip=("image_tokenizer",))
    out = convert(folder, tmp_path / "out")
    assert "not converted (yet): decoder/, decoder-turbo/, vae/" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.is_dir()] and not (out / "model_index.json").exists()


def _edit_safetensors(path, edit):
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_sigvq(path, edit):
    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, path)


def _edit_json(path, edit):
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _widen_sigvq(state, width=48, vocab=None):
    vocab = vocab or state["prior_token_embedding.weight"].shape[0]
    state.update({"prior_token_embedding.weight": torch.zeros(vocab, width),
                  "prior_projector.net.0.proj.weight": torch.zeros(width, width),
                  "prior_projector.net.0.proj.bias": torch.zeros(width),
                  "prior_projector.net.2.weight": torch.zeros(width, width),
                  "prior_projector.net.2.bias": torch.zeros(width)})


# case -> (file edited, edit, components, message the error must contain)
BAD_INPUTS = {
    "decoder_unknown_key": ("decoder/model.safetensors",
                            lambda t: t.update({"layers.0.mystery.weight": torch.zeros(2)}), None,
                            "decoder/model.safetensors tensors that map to nothing in ZImageTransformer2DModel: "
                            "layers.0.mystery.weight"),
    "decoder_missing_key": ("decoder/model.safetensors", lambda t: t.pop("semantic_embedder.1.bias"), None,
                            "tensors missing from decoder/model.safetensors: semantic_embedder.1.bias"),
    "turbo_shape": ("decoder-turbo/model.safetensors", lambda t: t.update({"x_pad_token": torch.zeros(1, 5)}), None,
                    "shape mismatches in decoder-turbo/model.safetensors: x_pad_token [1, 5] (expected [1, 16])"),
    "turbo_truncated": ("decoder-turbo/model.safetensors", None, None, "decoder-turbo/model.safetensors"),
    "two_weight_names": ("decoder/diffusion_pytorch_model.safetensors", None, None,
                         "holds weights under several names (model.safetensors, "
                         "diffusion_pytorch_model.safetensors)"),
    "decoder_bad_config": ("decoder/config.json", lambda c: c.update({"n_heads": 5}), None,
                           "decoder/config.json: cannot build ZImageTransformer2DModel from it"),
    "turbo_no_cap_feat_dim": ("decoder-turbo/config.json", lambda c: c.pop("cap_feat_dim"), None,
                              "decoder-turbo/config.json has no cap_feat_dim"),
    "vae_missing_key": ("vae/diffusion_pytorch_model.safetensors", lambda t: t.pop("decoder.conv_out.bias"), None,
                        "tensors missing from vae/diffusion_pytorch_model.safetensors: decoder.conv_out.bias"),
    "vae_no_shift_factor": ("vae/config.json", lambda c: c.pop("shift_factor"), None,
                            "vae/config.json has no shift_factor"),
    "vae_class": ("vae/config.json", lambda c: c.update({"_class_name": "AutoencoderTiny"}), None,
                  "declares 'AutoencoderTiny', expected 'AutoencoderKL'"),
    "sigvq_corrupted": (SIGVQ, None, None, "cannot read"),
    "sigvq_missing_key": (SIGVQ, lambda s: s.pop("prior_projector.net.2.bias"), None,
                          f"tensors missing from {SIGVQ}: prior_projector.net.2.bias"),
    "sigvq_absent": (SIGVQ, None, "llm,image_tokenizer,semantic_embedder", f"has no {SIGVQ}"),
    "sigvq_not_tensors": (SIGVQ, lambda s: s.update({"note": "text"}), None, "must hold a dict of tensors"),
    "sigvq_width": (SIGVQ, _widen_sigvq, None, f"decoder/model.safetensors: cap_feat_dim 32 differs from the width 48 "
                                                f"of {SIGVQ}"),
    "sigvq_codebook": (SIGVQ, lambda s: _widen_sigvq(s, width=32, vocab=65), None,
                       "embeds 65 codes but"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_leave_nothing_behind(source, tmp_path, case):
    relative, edit, components, message = BAD_INPUTS[case]
    folder = _copy(source, tmp_path / "orig")
    path = folder / relative
    if edit is not None:
        {".safetensors": _edit_safetensors, ".pt": _edit_sigvq, ".json": _edit_json}[path.suffix](path, edit)
    elif case == "two_weight_names":
        shutil.copyfile(folder / "decoder" / "model.safetensors", path)
    elif case == "turbo_truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "sigvq_corrupted":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "sigvq_absent":
        path.unlink()
    (tmp_path / "dest").mkdir()
    with pytest.raises(ConversionError, match=re.escape(message)) as error:
        convert(folder, tmp_path / "dest" / "out", components=components, quiet=True)
    assert "\n" not in str(error.value)
    if case in ("turbo_truncated", "sigvq_corrupted"):
        assert str(path) in str(error.value)
    assert list((tmp_path / "dest").iterdir()) == []


def test_command_line_error(source, tmp_path, capsys):
    folder = _copy(source, tmp_path / "orig")
    _edit_safetensors(folder / "vae" / "diffusion_pytorch_model.safetensors",
                      lambda t: t.update({"encoder.extra": torch.zeros(1)}))
    assert main(["--original", str(folder), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "encoder.extra" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
