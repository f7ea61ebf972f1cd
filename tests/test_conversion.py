"""conversion/convert_llada2_uni_to_hf.py: key layout, expert fusion, config ids, sharding, dtypes and error handling.

Most cases call `convert()` in-process on the public parity checkpoint (a LLaDA2.0-Uni root: it converts to the
composite `LLaDA2UniForConditionalGeneration`), on a text-only copy of it (no `image_tokenizer/`: the plain
`LLaDA2MoeForCausalLM`), or on a copy edited with safetensors; one case runs the command line for its exit code and
error line. Nothing depends on the public shapes or ids: they are read from the checkpoint. The numerical parity of
the converted model with the original code is checked in test_parity_llm.py and test_parity_uni.py.
"""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import REPO_ROOT, run_without_plugin

from conversion.checkpoint_io import ConversionError
from conversion.convert_llada2_uni_to_hf import convert, main
from transformers_llada_uni import (
    LLaDA2MoeConfig,
    LLaDA2MoeForCausalLM,
    LLaDA2UniConfig,
    LLaDA2UniForConditionalGeneration,
    LLaDA2UniImageProcessor,
)

EXPERT_KEY = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
REMOTE_FILES = {"configuration_llada2_uni.py", "modeling_llada2_moe.py", "generation_llada2_uni.py",
                "generation_config_llada2_uni.py", "training_llada2_uni.py", "sprint_llada2_uni.py"}
UNI_REMOTE_FILES = REMOTE_FILES | {"modeling_llada2_uni.py", "generation_modes_llada2_uni.py",
                                   "generation_tasks_llada2_uni.py", "image_processing_llada2_uni.py"}
ROOT_FILES = ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json")
IMAGE_PREFIXES = {"model.visual.": "visual.", "model.vqmodel.": "vqmodel."}
UNI_TOKENS = {"image_start_token_id": "<|image|>", "image_end_token_id": "<|/image|>", "boi_token_id": "<boi>",
              "uncondition_token_id": "<uncondition>", "reserved_token_start_id": "<|reserved_token_0|>"}


@pytest.fixture(scope="module")
def source(parity_checkpoint):
    return parity_checkpoint


@pytest.fixture(scope="module")
def source_tensors(source):
    index = json.loads((source / "model.safetensors.index.json").read_text())
    tensors = {}
    for file_name in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(source / file_name)))
    return tensors


@pytest.fixture(scope="module")
def image_tensors(source):
    (path,) = (source / "image_tokenizer").glob("*.safetensors")
    return load_file(str(path))


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    return convert(source, tmp_path_factory.mktemp("conv") / "out", quiet=True)


@pytest.fixture(scope="module")
def text_only_source(source, tmp_path_factory):
    """The parity checkpoint copied without image_tokenizer/ (decoder/, vae/ ... stay: they are only noted)."""
    folder = tmp_path_factory.mktemp("text_only") / "orig"
    shutil.copytree(source, folder, ignore=lambda d, names: ["image_tokenizer"] if d == str(source) else [])
    return folder


@pytest.fixture(scope="module")
def text_only_converted(text_only_source, tmp_path_factory):
    return convert(text_only_source, tmp_path_factory.mktemp("conv_text") / "out", quiet=True)


def _written(folder):
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def _ours(key):
    """Original image-tokenizer key -> converted key."""
    prefix = next(p for p in IMAGE_PREFIXES if key.startswith(p))
    return IMAGE_PREFIXES[prefix] + key[len(prefix):]


def _editable_copy(source, folder):
    """The LLM part of the parity checkpoint (root files + shards) copied to `folder`, to be edited."""
    folder.mkdir()
    for name in ROOT_FILES:
        (folder / name).write_bytes((source / name).read_bytes())
    for path in source.glob("*.safetensors"):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _uni_copy(source, folder, weights_name=None, edit=None):
    """The LLM part plus image_tokenizer/ (config, preprocessor config, weights, optionally renamed or edited)."""
    _editable_copy(source, folder)
    (folder / "image_tokenizer").mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(source / "image_tokenizer" / name, folder / "image_tokenizer" / name)
    (path,) = (source / "image_tokenizer").glob("*.safetensors")
    tensors = load_file(str(path))
    if edit is not None:
        edit(tensors)
    save_file(tensors, str(folder / "image_tokenizer" / (weights_name or path.name)), metadata={"format": "pt"})
    return folder


def _edit_checkpoint(folder, edit):
    """Apply `edit(dict of all tensors)` and rewrite the checkpoint as one shard + index."""
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    tensors = {}
    for file_name in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(folder / file_name)))
        (folder / file_name).unlink()
    edit(tensors)
    save_file(tensors, str(folder / "model-00001-of-00001.safetensors"), metadata={"format": "pt"})
    index["weight_map"] = {key: "model-00001-of-00001.safetensors" for key in tensors}
    index_file.write_text(json.dumps(index))


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _check_llm_layout(config, written, expected, source_tensors):
    assert {name: tuple(t.shape) for name, t in written.items()} == expected
    assert not any(EXPERT_KEY.match(name) for name in written)
    assert not any("inv_freq" in name for name in written)
    # Every non-expert key keeps its original name.
    assert {k for k in source_tensors if not EXPERT_KEY.match(k)} <= set(written)
    moe_layers = range(config.first_k_dense_replace, config.num_hidden_layers)
    E, I, H = config.num_experts, config.moe_intermediate_size, config.hidden_size
    for layer in moe_layers:
        assert written[f"model.layers.{layer}.mlp.experts.gate_up_proj"].shape == (E, 2 * I, H)
        assert written[f"model.layers.{layer}.mlp.experts.down_proj"].shape == (E, H, I)
        assert written[f"model.layers.{layer}.mlp.gate.expert_bias"].dtype == torch.float32
    qkv = written["model.layers.0.attention.query_key_value.weight"]
    assert qkv.shape == ((config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim, H)


def test_key_layout(converted, source_tensors, image_tensors):
    config = LLaDA2UniConfig.from_pretrained(converted)
    with torch.device("meta"):
        model = LLaDA2UniForConditionalGeneration(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    written = _written(converted)
    _check_llm_layout(config.text_config, written, expected, source_tensors)
    # The image tokenizer: prefixes stripped, nothing else renamed, every tensor unchanged.
    assert {k for k in written if k.startswith(("visual.", "vqmodel."))} == {_ours(k) for k in image_tensors}
    assert set(written) == {k for k in written if k.startswith(("model.", "lm_head.", "visual.", "vqmodel."))}
    for key, tensor in image_tensors.items():
        assert torch.equal(written[_ours(key)], tensor), key
    assert (converted / "model.safetensors").is_file() and not (converted / "model.safetensors.index.json").exists()


def test_text_only_key_layout(text_only_converted, source_tensors):
    config = LLaDA2MoeConfig.from_pretrained(text_only_converted)
    with torch.device("meta"):
        model = LLaDA2MoeForCausalLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    written = _written(text_only_converted)
    _check_llm_layout(config, written, expected, source_tensors)
    assert set(written) == set(expected)
    for key, tensor in source_tensors.items():
        if not EXPERT_KEY.match(key):
            assert torch.equal(written[key], tensor), key
    assert (text_only_converted / "model.safetensors").is_file()


def test_expert_fusion_equals_manual_stacking(converted, source_tensors):
    written = _written(converted)
    prefixes = sorted({m.group(1) for k in source_tensors if (m := EXPERT_KEY.match(k))})
    assert prefixes
    for prefix in prefixes:
        num_experts = written[f"{prefix}.gate_up_proj"].shape[0]
        gate_up = torch.stack([torch.cat([source_tensors[f"{prefix}.{e}.gate_proj.weight"],
                                          source_tensors[f"{prefix}.{e}.up_proj.weight"]])
                               for e in range(num_experts)])
        down = torch.stack([source_tensors[f"{prefix}.{e}.down_proj.weight"] for e in range(num_experts)])
        assert torch.equal(written[f"{prefix}.gate_up_proj"], gate_up)
        assert torch.equal(written[f"{prefix}.down_proj"], down)
    for key, tensor in source_tensors.items():
        if not EXPERT_KEY.match(key):
            assert torch.equal(written[key], tensor), key


def _tokenizer_id(source, token):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(source / "tokenizer.json")).token_to_id(token)


def _check_text_config(config, source):
    """The LLM fields of a converted config.json (top level for text-only, `text_config` for the composite)."""
    original = json.loads((source / "config.json").read_text())
    assert config["mask_token_id"] == _tokenizer_id(source, "<|mask|>") is not None
    assert config["eos_token_id"] == _tokenizer_id(source, "<|endoftext|>") is not None
    assert config["pad_token_id"] == original["pad_token_id"]
    assert config["bos_token_id"] == _tokenizer_id(source, "<|startoftext|>") is not None
    assert config["dtype"] == "float32"
    for key in ("vocab_size", "hidden_size", "num_experts", "image_token_offset", "rope_theta"):
        assert config[key] == original[key]


def _check_generation_config(folder, source):
    generation = json.loads((folder / "generation_config.json").read_text())
    assert {k: generation[k] for k in ("mask_token_id", "eos_token_id", "pad_token_id", "block_length", "steps",
                                       "threshold")} == {
        "mask_token_id": _tokenizer_id(source, "<|mask|>"), "eos_token_id": _tokenizer_id(source, "<|endoftext|>"),
        "pad_token_id": json.loads((source / "config.json").read_text())["pad_token_id"],
        "block_length": 32, "steps": 32, "threshold": 0.95}


def test_config_generation_config_and_code(converted, source):
    config = json.loads((converted / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    image_config = json.loads((source / "image_tokenizer" / "config.json").read_text())
    assert config["model_type"] == "llada2_uni"
    assert config["architectures"] == ["LLaDA2UniForConditionalGeneration"]
    assert config["dtype"] == "float32"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llada2_uni.LLaDA2UniConfig",
        "AutoModel": "modeling_llada2_uni.LLaDA2UniForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_llada2_uni.LLaDA2UniForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_llada2_uni.LLaDA2UniForConditionalGeneration",
    }
    assert config["image_token_offset"] == original["image_token_offset"]
    for field, token in UNI_TOKENS.items():
        assert config[field] == _tokenizer_id(source, token) is not None, field
    _check_text_config(config["text_config"], source)
    for name in ("vision_config", "vq_config"):
        assert {k: config[name][k] for k in image_config[name]} == image_config[name]
    _check_generation_config(converted, source)
    assert UNI_REMOTE_FILES <= {p.name for p in converted.glob("*.py")}
    # The image tokenizer merges into the root model; the pixel parts get their own Hub-style folders
    # (tests/test_conversion_decoder.py), never the original names.
    for name in ("image_tokenizer", "decoder-turbo", "sigvq_embedding.pt"):
        assert not (converted / name).exists(), name


def test_image_processor_config(converted, source):
    original = json.loads((source / "image_tokenizer" / "preprocessor_config.json").read_text())
    written = json.loads((converted / "preprocessor_config.json").read_text())
    assert written["image_processor_type"] == "LLaDA2UniImageProcessor"
    assert written["auto_map"] == {"AutoImageProcessor": "image_processing_llada2_uni.LLaDA2UniImageProcessor"}
    for key in ("patch_size", "image_mean", "image_std", "rescale_factor", "do_rescale", "do_normalize"):
        assert written[key] == original[key], key
    assert written["merge_size"] == 1 and written["temporal_patch_size"] == 1
    processor = LLaDA2UniImageProcessor.from_pretrained(converted)
    assert processor.patch_size == original["patch_size"]


def test_text_only_source_gives_the_plain_llm(text_only_converted, text_only_source):
    config = json.loads((text_only_converted / "config.json").read_text())
    assert config["model_type"] == "llada2_moe"
    assert config["architectures"] == ["LLaDA2MoeForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llada2_moe.LLaDA2MoeForCausalLM"
    _check_text_config(config, text_only_source)
    _check_generation_config(text_only_converted, text_only_source)
    assert {p.name for p in text_only_converted.glob("*.py")} == REMOTE_FILES
    assert not (text_only_converted / "preprocessor_config.json").exists()
    assert isinstance(LLaDA2MoeForCausalLM.from_pretrained(text_only_converted), LLaDA2MoeForCausalLM)


def test_components_llm_on_a_uni_root_gives_the_plain_llm(source, text_only_converted, tmp_path, capsys):
    out = convert(source, tmp_path / "out", components="llm")
    log = capsys.readouterr().out
    assert "not converted (yet): image_tokenizer/" in log
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (text_only_converted / "config.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in text_only_converted.iterdir())
    whole, llm_only = _written(text_only_converted), _written(out)
    assert whole.keys() == llm_only.keys() and all(torch.equal(whole[k], llm_only[k]) for k in whole)


def test_components_errors(source, text_only_source, tmp_path):
    with pytest.raises(ConversionError, match="must include llm"):
        convert(source, tmp_path / "out", components=["image_tokenizer"], quiet=True)
    with pytest.raises(ConversionError, match="subset of llm, image_tokenizer, semantic_embedder, decoder"):
        convert(source, tmp_path / "out", components="llm,mystery", quiet=True)
    with pytest.raises(ConversionError, match="has no image_tokenizer"):
        convert(text_only_source, tmp_path / "out", components="llm,image_tokenizer", quiet=True)
    assert _listing(tmp_path) == []


def test_tokenizer_loads_with_and_without_plugin(converted):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = json.loads((converted / "config.json").read_text())["text_config"]
    for tokenizer in (AutoTokenizer.from_pretrained(converted), PreTrainedTokenizerFast.from_pretrained(converted)):
        assert tokenizer.mask_token == "<|mask|>"
        assert tokenizer.mask_token_id == config["mask_token_id"]
        assert tokenizer.eos_token_id == config["eos_token_id"]
        assert tokenizer.convert_tokens_to_ids("<|startoftext|>") == config["bos_token_id"]
    result = run_without_plugin(
        f"""
        import json
        from transformers import AutoTokenizer
        ids = [AutoTokenizer.from_pretrained({str(converted)!r}, trust_remote_code=trust).mask_token_id
               for trust in (True, False)]
        print(json.dumps(ids))
        """
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [config["mask_token_id"]] * 2


def test_small_shards_and_consistent_index(source, converted, tmp_path):
    out = convert(source, tmp_path / "sharded", max_shard_size="100KB", quiet=True)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 2 and sorted(set(index["weight_map"].values())) == files
    assert all(re.fullmatch(rf"model-\d{{5}}-of-{len(files):05d}\.safetensors", name) for name in files)
    total = 0
    for name in files:
        with safe_open(str(out / name), framework="pt") as handle:
            keys = set(handle.keys())
            sizes = [handle.get_tensor(k).nbytes for k in keys]
        assert keys == {k for k, f in index["weight_map"].items() if f == name}
        assert sum(sizes) <= 100_000 or len(keys) == 1, (name, sizes)
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total
    whole, sharded = _written(converted), _written(out)
    assert whole.keys() == sharded.keys() and all(torch.equal(whole[k], sharded[k]) for k in whole)
    model = LLaDA2UniForConditionalGeneration.from_pretrained(out)
    assert torch.equal(model.model.layers[1].mlp.experts.gate_up_proj.data,
                       whole["model.layers.1.mlp.experts.gate_up_proj"])
    assert torch.equal(model.vqmodel.quantize.embedding.weight.data, whole["vqmodel.quantize.embedding.weight"])


def test_bf16_output_keeps_expert_bias_fp32(source, source_tensors, image_tensors, tmp_path):
    out = convert(source, tmp_path / "bf16", dtype="bf16", quiet=True)
    written = _written(out)
    originals = {**source_tensors, **{_ours(k): t for k, t in image_tensors.items()}}
    for name, tensor in written.items():
        want = torch.float32 if name.endswith("expert_bias") else torch.bfloat16
        assert tensor.dtype == want, name
        if name in originals:
            assert torch.equal(tensor, originals[name].to(want)), name
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["text_config"]["dtype"] == "bfloat16"


def test_single_file_source_with_inv_freq_and_no_expert_bias(source, tmp_path):
    folder = _editable_copy(source, tmp_path / "orig")

    def edit(tensors):
        for key in [k for k in tensors if k.endswith("expert_bias")]:
            del tensors[key]
        tensors["model.rotary_emb.inv_freq"] = torch.ones(4)

    _edit_checkpoint(folder, edit)
    # Single-file layout: model.safetensors without an index.
    (folder / "model-00001-of-00001.safetensors").rename(folder / "model.safetensors")
    (folder / "model.safetensors.index.json").unlink()
    out = convert(folder, tmp_path / "out", verify=True, quiet=True)
    written = _written(out)
    assert not any(k.endswith("expert_bias") or "inv_freq" in k for k in written)
    model = LLaDA2MoeForCausalLM.from_pretrained(out)
    assert torch.count_nonzero(model.model.layers[1].mlp.gate.expert_bias) == 0


def test_missing_original_folder(tmp_path, capsys):
    with pytest.raises(ConversionError, match="does not exist"):
        convert(tmp_path / "nope", tmp_path / "out", quiet=True)
    assert main(["--original", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert _listing(tmp_path) == []


def test_existing_output_needs_overwrite(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="already exists"):
        convert(source, out, quiet=True)
    # --overwrite replaces only a checkpoint folder: a folder of other files is refused, untouched.
    with pytest.raises(ConversionError, match="not a LLaDA2 checkpoint folder"):
        convert(source, out, overwrite=True, quiet=True)
    assert _listing(out) == ["marker.txt"] and _listing(tmp_path) == ["out"]
    (out / "config.json").write_text('{"model_type": "llada2_uni"}')
    convert(source, out, overwrite=True, quiet=True)
    assert not (out / "marker.txt").exists() and (out / "config.json").is_file()
    assert _listing(tmp_path) == ["out"]  # no temporary or backup folder left


def test_missing_expert_tensor_is_an_error(source, tmp_path):
    folder = _editable_copy(source, tmp_path / "orig")
    _edit_checkpoint(folder, lambda t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(ConversionError, match=re.escape("model.layers.1.mlp.experts.3.up_proj.weight")):
        convert(folder, tmp_path / "dest" / "out", quiet=True)
    assert _listing(tmp_path / "dest") == []


def test_unknown_key_fails_on_the_command_line(source, tmp_path):
    folder = _editable_copy(source, tmp_path / "orig")
    _edit_checkpoint(folder, lambda t: t.update({"model.layers.0.attention.mystery.weight": torch.zeros(2, 2)}))
    dest = tmp_path / "dest"
    dest.mkdir()
    result = subprocess.run(
        [sys.executable, "conversion/convert_llada2_uni_to_hf.py", "--original", str(folder),
         "--output", str(dest / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    assert "model.layers.0.attention.mystery.weight" in err[0]
    assert _listing(dest) == []  # neither the output nor the temporary folder


def test_bad_options(source, tmp_path):
    with pytest.raises(ConversionError, match="--dtype"):
        convert(source, tmp_path / "out", dtype="int8", quiet=True)
    with pytest.raises(ConversionError, match="size"):
        convert(source, tmp_path / "out", max_shard_size="lots", quiet=True)
    with pytest.raises(ConversionError, match="must not be"):
        convert(source, source / "converted", quiet=True)
    assert _listing(tmp_path) == []


def _original_layout(state_dict):
    """Our state dict -> the original per-expert key layout (the inverse of the conversion)."""
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith(".experts.gate_up_proj"):
            prefix, inter = name[: -len(".gate_up_proj")], tensor.shape[1] // 2
            for e in range(tensor.shape[0]):
                out[f"{prefix}.{e}.gate_proj.weight"] = tensor[e, :inter].clone()
                out[f"{prefix}.{e}.up_proj.weight"] = tensor[e, inter:].clone()
        elif name.endswith(".experts.down_proj"):
            prefix = name[: -len(".down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{prefix}.{e}.down_proj.weight"] = tensor[e].clone()
        else:
            out[name] = tensor.clone()
    return out


def test_round_trip_with_other_shapes_and_ids(tmp_path):
    """Shapes and ids unlike the public set (2 dense layers, 32 experts, head_dim 8, special ids elsewhere, an
    `auto_map` in tokenizer_config.json, no mask_token there): converting an original-layout export of a random model
    gives back exactly that model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    shapes = dict(vocab_size=608, hidden_size=64, intermediate_size=80, moe_intermediate_size=4, num_hidden_layers=5,
                  first_k_dense_replace=2, num_attention_heads=8, num_key_value_heads=2, head_dim=8, num_experts=32,
                  num_experts_per_tok=6, n_group=8, topk_group=3, routed_scaling_factor=2.5, pad_token_id=465)
    torch.manual_seed(0)
    model = LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**shapes)).eval()
    for layer in model.model.layers[2:]:
        layer.mlp.gate.expert_bias.normal_(0, 0.15)
    folder = tmp_path / "orig"
    folder.mkdir()
    original_config = {"architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "torch_dtype": "float32",
                       "auto_map": {"AutoConfig": "configuration_llada2uni_moe.LLaDA2MoeConfig"}, **shapes}
    (folder / "config.json").write_text(json.dumps(original_config))
    tensors = _original_layout(model.state_dict())
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[: len(keys) // 2]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in keys[len(keys) // 2:]}, str(folder / "model-00002-of-00002.safetensors"))
    index = {k: f"model-0000{1 + (i >= len(keys) // 2)}-of-00002.safetensors" for i, k in enumerate(keys)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    specials = {"<|startoftext|>": 464, "<|endoftext|>": 465, "<|mask|>": 468}
    vocab = {f"w{i}": i for i in range(536) if i not in specials.values()}
    tokenizer = Tokenizer(models.WordLevel({**vocab, **specials}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LLaDA2Tokenizer", "auto_map": {"AutoTokenizer": [None, "tokenization.LLaDA2Tokenizer"]},
        "eos_token": "<|endoftext|>", "bos_token": "<|startoftext|>"}))

    out = convert(folder, tmp_path / "out", max_shard_size="20KB", quiet=True)
    config = json.loads((out / "config.json").read_text())
    assert (config["mask_token_id"], config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (
        468, 465, 465, 464)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in tokenizer_config and tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["mask_token"] == "<|mask|>"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).mask_token_id == 468
    loaded = LLaDA2MoeForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.randint(0, 608, (1, 34))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# LLaDA2.0-Uni roots: the image tokenizer
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights_name", ["image_tokenizer.safetensors", "model.safetensors", "siglip_vq.safetensors"])
def test_image_tokenizer_weights_file_name(source, converted, tmp_path, capsys, weights_name):
    """The release names the file image_tokenizer.safetensors or model.safetensors; any single *.safetensors file
    converts to the same weights (and passes --verify)."""
    folder = _uni_copy(source, tmp_path / "orig", weights_name=weights_name)
    assert [p.name for p in (folder / "image_tokenizer").glob("*.safetensors")] == [weights_name]
    out = convert(folder, tmp_path / "out", verify=weights_name == "image_tokenizer.safetensors")
    log = capsys.readouterr().out
    assert f"image_tokenizer/{weights_name}" in log
    if weights_name == "image_tokenizer.safetensors":
        assert "verified: one image patch" in log
    reference, written = _written(converted), _written(out)
    assert reference.keys() == written.keys() and all(torch.equal(reference[k], written[k]) for k in reference)
    assert json.loads((out / "config.json").read_text()) == json.loads((converted / "config.json").read_text())


@pytest.mark.parametrize("case", ["foreign_prefix", "missing", "unknown", "shape", "two_files", "no_file"])
def test_image_tokenizer_errors(source, tmp_path, case):
    """Every image tokenizer key must map (prefix model.visual. / model.vqmodel.), every module tensor must be filled,
    shapes must agree, and there must be exactly one weights file; the error names the offenders."""
    edits = {
        "foreign_prefix": (lambda t: t.update({"model.decoder.proj.weight": torch.zeros(2)}),
                           "model.decoder.proj.weight"),
        "missing": (lambda t: t.pop("model.vqmodel.post_quant_conv.weight"), "model.vqmodel.post_quant_conv.weight"),
        "unknown": (lambda t: t.update({"model.visual.mystery.weight": torch.zeros(2)}), "model.visual.mystery.weight"),
        "shape": (lambda t: t.update({"model.vqmodel.quantize.embedding.weight": torch.zeros(3, 5)}),
                  "model.vqmodel.quantize.embedding.weight [3, 5]"),
    }
    edit, message = edits.get(case, (None, "exactly one *.safetensors"))
    folder = _uni_copy(source, tmp_path / "orig", edit=edit)
    weights = next((folder / "image_tokenizer").glob("*.safetensors"))
    if case == "two_files":
        shutil.copyfile(weights, folder / "image_tokenizer" / "image_tokenizer.safetensors")
    elif case == "no_file":
        weights.unlink()
    (tmp_path / "dest").mkdir()
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert(folder, tmp_path / "dest" / "out", quiet=True)
    assert _listing(tmp_path / "dest") == []


def test_processor_merge_size_is_forced_to_one(source, tmp_path, capsys):
    folder = _uni_copy(source, tmp_path / "orig")
    config_file = folder / "image_tokenizer" / "preprocessor_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "merge_size": 2}))
    out = convert(folder, tmp_path / "out")
    assert re.search(r"warning: .*merge_size 2; it is forced to 1", capsys.readouterr().out)
    assert json.loads((out / "preprocessor_config.json").read_text())["merge_size"] == 1


def test_uni_round_trip_with_other_shapes_and_ids(tmp_path, capsys):
    """A random composite with shapes unlike the public set (5 layers, 32 experts, head_dim 8; vision depth 3, 2 heads,
    a 6x6 position table, codebook 72x24), image ids elsewhere, `<uncondition>` absent from the tokenizer, the weights
    file named image_tokenizer.safetensors: the converted folder holds exactly that model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    text = dict(vocab_size=608, hidden_size=64, intermediate_size=80, moe_intermediate_size=4, num_hidden_layers=5,
                first_k_dense_replace=2, num_attention_heads=8, num_key_value_heads=2, head_dim=8, num_experts=32,
                num_experts_per_tok=6, n_group=8, topk_group=3, routed_scaling_factor=2.5, pad_token_id=465,
                image_token_offset=536)
    vision = dict(hidden_size=32, intermediate_size=48, num_heads=2, depth=3, patch_size=16, image_size=96,
                  in_channels=3, hidden_act="gelu", attention_bias=True, layer_norm_eps=1e-6, spatial_merge_size=1)
    vq = dict(num_embeddings=72, embed_dim=24, latent_channels=32, beta=0.25)
    specials = {"<|startoftext|>": 464, "<|endoftext|>": 465, "<|mask|>": 468, "<|image|>": 474, "<|/image|>": 475,
                "<boi>": 477, **{f"<|reserved_token_{n}|>": 484 + n for n in range(48)}}
    torch.manual_seed(0)
    model = LLaDA2UniForConditionalGeneration(LLaDA2UniConfig(
        text_config=LLaDA2MoeConfig(**text, mask_token_id=468), vision_config=vision, vq_config=vq)).eval()
    for layer in model.model.layers[2:]:
        layer.mlp.gate.expert_bias.normal_(0, 0.15)
    with torch.no_grad():
        model.visual.embeddings.position_embedding.weight.mul_(8)

    folder = tmp_path / "orig"
    (folder / "image_tokenizer").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LLaDA2MoeModelLM"],
                                                    "model_type": "llada2_moe", **text}))
    state = model.state_dict()
    llm = _original_layout({k: v for k, v in state.items() if k.startswith(("model.", "lm_head."))})
    save_file(llm, str(folder / "model.safetensors"))
    image = {"model." + k: v.clone() for k, v in state.items() if k.startswith(("visual.", "vqmodel."))}
    save_file(image, str(folder / "image_tokenizer" / "image_tokenizer.safetensors"))
    (folder / "image_tokenizer" / "config.json").write_text(json.dumps({"vision_config": vision, "vq_config": vq}))
    (folder / "image_tokenizer" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "GlmImageImageProcessor", "patch_size": 16, "temporal_patch_size": 1,
        "merge_size": 1, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255,
        "do_resize": False}))
    vocab = {f"w{i}": i for i in range(536) if i not in specials.values()}
    tokenizer = Tokenizer(models.WordLevel({**vocab, **specials}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))

    out = convert(folder, tmp_path / "out", max_shard_size="20KB")
    assert "note: the tokenizer has no <uncondition>; uncondition_token_id stays None" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in (*UNI_TOKENS, "image_token_offset")} == {
        "image_start_token_id": 474, "image_end_token_id": 475, "boi_token_id": 477, "uncondition_token_id": None,
        "reserved_token_start_id": 484, "image_token_offset": 536}
    assert config["text_config"]["mask_token_id"] == 468
    loaded = LLaDA2UniForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    for name, tensor in state.items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.randint(0, 608, (1, 34))
    grid = torch.tensor([[1, 5, 3], [1, 2, 7]])  # non-square, packed, one larger than the 6x6 table in neither side
    pixels = torch.randn(int(grid.prod(dim=1).sum()), 3 * 16 * 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
        assert torch.equal(loaded.get_image_tokens(pixels, grid), model.get_image_tokens(pixels, grid))


def test_output_inside_the_source_through_a_symlink_is_refused(source, tmp_path):
    copy = tmp_path / "orig"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("decoder*", "vae"))
    (tmp_path / "link").symlink_to(copy)
    with pytest.raises(ConversionError, match="must not be, contain or lie inside"):
        convert(copy, tmp_path / "link" / "converted", quiet=True)
    assert not (copy / "converted").exists()
