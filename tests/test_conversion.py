"""conversion/convert_llada2_uni_to_hf.py: key layout, expert fusion, config ids, sharding, dtypes and error handling.

Most cases call `convert()` in-process on the public parity checkpoint (or on a copy edited with safetensors); one
case runs the command line for its exit code and error line. The numerical parity of the converted model with the
original code is checked in test_parity_llm.py.
"""

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import PARITY_DIR, REPO_ROOT, run_without_plugin

from conversion.checkpoint_io import ConversionError
from conversion.convert_llada2_uni_to_hf import convert, main
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM

EXPERT_KEY = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
REMOTE_FILES = {"configuration_llada2_uni.py", "modeling_llada2_moe.py", "generation_llada2_uni.py"}
ROOT_FILES = ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json")


@pytest.fixture(scope="module")
def source():
    if not PARITY_DIR.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY_DIR}")
    return PARITY_DIR / "checkpoint"


@pytest.fixture(scope="module")
def source_tensors(source):
    index = json.loads((source / "model.safetensors.index.json").read_text())
    tensors = {}
    for file_name in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(source / file_name)))
    return tensors


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    return convert(source, tmp_path_factory.mktemp("conv") / "out", quiet=True)


def _written(folder):
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def _editable_copy(source, folder):
    """The LLM part of the parity checkpoint (root files + shards) copied to `folder`, to be edited."""
    folder.mkdir()
    for name in ROOT_FILES:
        (folder / name).write_bytes((source / name).read_bytes())
    for path in source.glob("*.safetensors"):
        (folder / path.name).write_bytes(path.read_bytes())
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


def test_key_layout(converted, source_tensors):
    config = LLaDA2MoeConfig.from_pretrained(converted)
    with torch.device("meta"):
        model = LLaDA2MoeForCausalLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    written = _written(converted)
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
    assert (converted / "model.safetensors").is_file() and not (converted / "model.safetensors.index.json").exists()


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


def test_config_generation_config_and_code(converted, source):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    original = json.loads((source / "config.json").read_text())
    config = json.loads((converted / "config.json").read_text())
    assert config["mask_token_id"] == tokenizer.token_to_id("<|mask|>") == 444
    assert config["eos_token_id"] == tokenizer.token_to_id("<|endoftext|>") == 441
    assert config["pad_token_id"] == original["pad_token_id"] == 441
    assert config["bos_token_id"] == tokenizer.token_to_id("<|startoftext|>") == 440
    assert config["architectures"] == ["LLaDA2MoeForCausalLM"]
    assert config["dtype"] == "float32"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llada2_moe.LLaDA2MoeForCausalLM"
    for key in ("vocab_size", "hidden_size", "num_experts", "image_token_offset", "rope_theta"):
        assert config[key] == original[key]
    generation = json.loads((converted / "generation_config.json").read_text())
    assert {k: generation[k] for k in ("mask_token_id", "eos_token_id", "pad_token_id", "block_length", "steps",
                                       "threshold")} == {"mask_token_id": 444, "eos_token_id": 441,
                                                         "pad_token_id": 441, "block_length": 32, "steps": 32,
                                                         "threshold": 0.95}
    assert REMOTE_FILES <= {p.name for p in converted.glob("*.py")}
    assert not (converted / "image_tokenizer").exists()  # Uni components are not converted yet


def test_tokenizer_loads_with_and_without_plugin(converted):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = json.loads((converted / "config.json").read_text())
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
    model = LLaDA2MoeForCausalLM.from_pretrained(out)
    assert torch.equal(model.model.layers[1].mlp.experts.gate_up_proj.data,
                       whole["model.layers.1.mlp.experts.gate_up_proj"])


def test_bf16_output_keeps_expert_bias_fp32(source, source_tensors, tmp_path):
    out = convert(source, tmp_path / "bf16", dtype="bf16", quiet=True)
    written = _written(out)
    for name, tensor in written.items():
        want = torch.float32 if name.endswith("expert_bias") else torch.bfloat16
        assert tensor.dtype == want, name
        if name in source_tensors:
            assert torch.equal(tensor, source_tensors[name].to(want)), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


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
    assert _listing(out) == ["marker.txt"] and _listing(tmp_path) == ["out"]
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
