"""FP8 sources (the `-FP8` release's expert weights): kept as FP8 with their scales, or dequantized on request.

The parity checkpoint's routed experts are quantized here to float8_e4m3fn, either with block scales
(`weight_scale_inv`, `quantization_config.weight_block_size`) or with one scale per tensor (`weight_scale`). A second
copy holds the dequantized values (fp8 x scale) in float32: the FP8 conversions must load into models whose
dequantized expert weights equal that copy's bit for bit. Their logits agree to float noise (~1e-5): the kept-FP8
model multiplies by freshly dequantized weight buffers, whose memory alignment differs from the parameter slices the
float model uses, and the CPU matmul kernels round differently for them.
"""
LOGITS_ATOL = 1e-4

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import PARITY_DIR, require_parity_dir

from conversion.checkpoint_io import ConversionError
from conversion.convert_llada2_uni_to_hf import convert
from transformers_llada_uni import LLaDA2MoeForCausalLM

EXPERT = re.compile(r"experts\.\d+\.(gate|up|down)_proj\.weight$")


def _quantize(weight, block):
    """(fp8 weight, scale, dequantized float32) for `block` = (rows, cols) or None (one scale per tensor)."""
    weight = weight.float()
    rows, cols = weight.shape
    br, bc = block or (rows, cols)
    grid = weight.reshape(rows // br, br, cols // bc, bc).abs().amax(dim=(1, 3)).clamp(min=1e-8) / 448
    expanded = grid.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    fp8 = (weight / expanded).to(torch.float8_e4m3fn)
    scale = grid if block else grid.reshape(())
    return fp8, scale, fp8.float() * expanded


def _snapshot(tmp_path, name, block=(8, 8), extra=None):
    """An FP8 copy (`name`) and its dequantized float32 twin (`name`-ref) of the parity checkpoint."""
    require_parity_dir()
    source = PARITY_DIR / "checkpoint"
    fp8_dir, ref_dir = tmp_path / name, tmp_path / f"{name}-ref"
    for folder in (fp8_dir, ref_dir):
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("decoder*", "vae", "image_tokenizer"))
    index = json.loads((source / "model.safetensors.index.json").read_text())
    weight_map = {}
    suffix = "weight_scale_inv" if block else "weight_scale"
    for file_name in sorted(set(index["weight_map"].values())):
        fp8_tensors, ref_tensors = {}, {}
        for key, tensor in load_file(str(source / file_name)).items():
            if EXPERT.search(key):
                fp8, scale, ref = _quantize(tensor, block)
                fp8_tensors[key], fp8_tensors[key[: -len("weight")] + suffix], ref_tensors[key] = fp8, scale, ref
            else:
                fp8_tensors[key] = ref_tensors[key] = tensor
        fp8_tensors.update((extra or {}).get(file_name, {}))
        save_file(fp8_tensors, str(fp8_dir / file_name), metadata={"format": "pt"})
        save_file(ref_tensors, str(ref_dir / file_name), metadata={"format": "pt"})
        weight_map.update({key: file_name for key in fp8_tensors})
    (fp8_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((fp8_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(block or (128, 128))}
    (fp8_dir / "config.json").write_text(json.dumps(config))
    return fp8_dir, ref_dir


def _tensors(folder):
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def _assert_same_experts(fp8_model, float_model):
    for fp8_layer, float_layer in zip(fp8_model.model.layers, float_model.model.layers):
        if fp8_layer.is_moe:
            experts = torch.arange(fp8_layer.mlp.experts.num_experts)
            for name in ("gate_up_proj", "down_proj"):
                dequantized = fp8_layer.mlp.experts.dequantized(name, experts, torch.float32)
                assert torch.equal(dequantized, getattr(float_layer.mlp.experts, name)), name


def _logits(folder, **kwargs):
    model = LLaDA2MoeForCausalLM.from_pretrained(folder, **kwargs).eval()
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        return model(ids).logits, model


@pytest.fixture(scope="module")
def block_case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp8")
    fp8_dir, ref_dir = _snapshot(tmp, "block")
    reference = convert(ref_dir, tmp / "ref-out", components="llm", quiet=True)
    return tmp, fp8_dir, reference


def test_keep_stores_fp8_experts_with_scales_and_matches_the_dequantized_model(block_case):
    tmp, fp8_dir, reference = block_case
    out = convert(fp8_dir, tmp / "keep", components="llm", quiet=True)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    source = config["experts_fp8"].pop("source")
    assert config["experts_fp8"] == {"dtype": "float8_e4m3fn", "gate_up_block_size": [8, 8],
                                     "down_block_size": [8, 8]}
    # Recorded for the export back to the original layout.
    assert source == {"scale_suffix": "weight_scale_inv", "scale_rank": 2,
                      "quantization_config": json.loads((fp8_dir / "config.json").read_text())["quantization_config"]}
    tensors = _tensors(out)
    layer = next(k.rsplit(".", 1)[0] for k in tensors if k.endswith("experts.gate_up_proj"))
    assert tensors[f"{layer}.gate_up_proj"].dtype == torch.float8_e4m3fn
    assert tensors[f"{layer}.gate_up_proj_scale_inv"].dtype == torch.float32
    experts, rows, cols = tensors[f"{layer}.gate_up_proj"].shape
    assert tensors[f"{layer}.gate_up_proj_scale_inv"].shape == (experts, rows // 8, cols // 8)
    logits, model = _logits(out)
    expected, float_model = _logits(reference)
    _assert_same_experts(model, float_model)
    torch.testing.assert_close(logits, expected, atol=LOGITS_ATOL, rtol=0)
    # A bf16 load keeps the experts in FP8 (no silent upcast) and the scales in float32.
    _, bf16_model = _logits(out, dtype=torch.bfloat16)
    experts_module = bf16_model.model.layers[-1].mlp.experts
    assert experts_module.gate_up_proj.dtype == torch.float8_e4m3fn
    assert experts_module.gate_up_proj_scale_inv.dtype == torch.float32
    assert bf16_model.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype, torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_dtype_dequantizes(block_case, dtype, torch_dtype):
    tmp, fp8_dir, reference = block_case
    out = convert(fp8_dir, tmp / f"deq-{dtype}", components="llm", dtype=dtype, quiet=True)
    assert json.loads((out / "config.json").read_text()).get("experts_fp8") is None
    ours, ref = _tensors(out), _tensors(reference)
    assert ours.keys() == ref.keys()
    for key, tensor in ours.items():
        expected = ref[key] if "expert_bias" in key else ref[key].to(torch_dtype)
        assert tensor.dtype == expected.dtype and torch.equal(tensor, expected), key


def test_per_tensor_scales(tmp_path):
    fp8_dir, ref_dir = _snapshot(tmp_path, "tensor", block=None)
    config = json.loads((fp8_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static"}
    (fp8_dir / "config.json").write_text(json.dumps(config))
    out = convert(fp8_dir, tmp_path / "keep", components="llm", quiet=True)
    written = json.loads((out / "config.json").read_text())["experts_fp8"]
    inter, hidden = config["moe_intermediate_size"], config["hidden_size"]
    assert written["gate_up_block_size"] == [inter, hidden] and written["down_block_size"] == [hidden, inter]
    logits, model = _logits(out)
    expected, float_model = _logits(convert(ref_dir, tmp_path / "ref", components="llm", quiet=True))
    _assert_same_experts(model, float_model)
    torch.testing.assert_close(logits, expected, atol=LOGITS_ATOL, rtol=0)


def test_activation_scales_are_dropped(tmp_path):
    require_parity_dir()
    index = json.loads((PARITY_DIR / "checkpoint" / "model.safetensors.index.json").read_text())
    file_name = next(f for k, f in index["weight_map"].items() if EXPERT.search(k))
    key = next(k for k, f in index["weight_map"].items() if f == file_name and EXPERT.search(k))
    extra = {file_name: {key[: -len("weight")] + "input_scale": torch.tensor(0.5)}}
    fp8_dir, _ = _snapshot(tmp_path, "static", extra=extra)
    out = convert(fp8_dir, tmp_path / "out", components="llm", quiet=True)
    assert not any(k.endswith("input_scale") for k in _tensors(out))


def test_bad_fp8_sources_are_named(tmp_path):
    fp8_dir, _ = _snapshot(tmp_path, "bad")
    index = json.loads((fp8_dir / "model.safetensors.index.json").read_text())
    scale_key = next(k for k in index["weight_map"] if k.endswith("weight_scale_inv"))
    file_name = index["weight_map"][scale_key]
    tensors = load_file(str(fp8_dir / file_name))
    scale = tensors.pop(scale_key)
    del index["weight_map"][scale_key]
    save_file(tensors, str(fp8_dir / file_name), metadata={"format": "pt"})
    (fp8_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    weight_key = scale_key[: -len("_scale_inv")]
    with pytest.raises(ConversionError, match=re.escape(weight_key)):
        convert(fp8_dir, tmp_path / "out", components="llm", quiet=True)
    tensors[scale_key] = scale[:1]
    index["weight_map"][scale_key] = file_name
    save_file(tensors, str(fp8_dir / file_name), metadata={"format": "pt"})
    (fp8_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="fits no known FP8 layout"):
        convert(fp8_dir, tmp_path / "out", components="llm", quiet=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_blocks_that_do_not_tile_the_experts_need_dequantizing(tmp_path):
    fp8_dir, _ = _snapshot(tmp_path, "ragged", block=(8, 8))
    config = json.loads((fp8_dir / "config.json").read_text())
    # Pretend the scales were made for 3 x 8 tiles: the shapes no longer fit the declared block.
    config["quantization_config"]["weight_block_size"] = [3, 8]
    (fp8_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="fits no known FP8 layout"):
        convert(fp8_dir, tmp_path / "out", components="llm", quiet=True)


@pytest.mark.parametrize(
    "experts_fp8, match",
    [
        ({"dtype": "float16", "gate_up_block_size": [8, 8], "down_block_size": [8, 8]}, "float8_e4m3fn"),
        ({"dtype": "float8_e4m3fn", "gate_up_block_size": [3, 8], "down_block_size": [8, 8]}, "gate_up_block_size"),
        ({"dtype": "float8_e4m3fn", "gate_up_block_size": [8, 8]}, "down_block_size"),
    ],
)
def test_config_rejects_bad_fp8_layouts(experts_fp8, match):
    from conftest import tiny_config_kwargs
    from transformers_llada_uni import LLaDA2MoeConfig

    with pytest.raises(ValueError, match=match):
        LLaDA2MoeConfig(**tiny_config_kwargs(), experts_fp8=experts_fp8)


def test_fp8_experts_are_frozen():
    from conftest import tiny_config_kwargs
    from transformers_llada_uni import LLaDA2MoeConfig

    config = LLaDA2MoeConfig(**tiny_config_kwargs(), experts_fp8={"dtype": "float8_e4m3fn",
                                                                  "gate_up_block_size": [8, 8],
                                                                  "down_block_size": [8, 8]})
    model = LLaDA2MoeForCausalLM(config).eval()
    experts = [layer.mlp.experts for layer in model.model.layers if layer.is_moe]
    assert all(not p.requires_grad for e in experts for p in e.parameters())
    assert experts[0].gate_up_proj.dtype == torch.float8_e4m3fn
    with torch.no_grad():
        logits = model(torch.arange(5).reshape(1, -1)).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("block", [(8, 8), None], ids=["block-scales", "per-tensor"])
def test_fp8_round_trip_to_the_original_layout(tmp_path, block):
    from conversion.export_to_original import export

    fp8_dir, _ = _snapshot(tmp_path, "src", block=block)
    converted = convert(fp8_dir, tmp_path / "hf", components="llm", quiet=True)
    exported = export(converted, tmp_path / "back", quiet=True)
    original, back = _tensors(fp8_dir), _tensors(exported)
    assert original.keys() == back.keys()
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert torch.equal(back[key].view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else back[key],
                           tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor), key
    config = json.loads((exported / "config.json").read_text())
    assert config["quantization_config"] == json.loads((fp8_dir / "config.json").read_text())["quantization_config"]
    assert "experts_fp8" not in config
