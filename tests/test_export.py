"""conversion/export_to_original.py: converted folder -> the original LLaDA2.0-Uni layout, and back.

The public parity checkpoint (original layout) is converted with `convert()` and exported back with `export()`; the
export must reproduce every original tensor bit for bit (root shards, image tokenizer, sigvq_embedding.pt, both
decoders, the VAE), keep every key and value of the original config files, and convert again to the same tensors.
Then a text-only export, a bf16 export, the reader's memory pattern, and the refusals (which must leave nothing
behind); one case runs the command line for its exit code and error line.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import REPO_ROOT, offline_env

from conversion.checkpoint_io import ConversionError
from conversion.convert_llada2_uni_to_hf import convert
from conversion.export_to_original import export
from conversion.original_layout import TensorReader, plan_llm_export
from diffusers_llada_uni.hub_layout import SUBFOLDERS

# Keys the exported root config.json has beyond the original's, on purpose: ids and settings our config class holds
# as fields (the mini releases' routing keys, the special ids the converter read from the tokenizer, the
# block-diffusion block length). Keeping them is harmless for the original loader (PretrainedConfig keeps unknown keys
# as attributes) and keeps a second conversion identical.
EXTRA_ROOT_KEYS = {"block_length", "bos_token_id", "eos_token_id", "mask_token_id", "moe_router_enable_expert_bias",
                   "norm_topk_prob", "router_dtype", "score_function"}
# Original root config keys whose value is deliberately different after the round trip: none.
DIFFERENT_ROOT_KEYS = {}
PIXEL_FILES = ("image_tokenizer/model.safetensors", "decoder/model.safetensors", "decoder-turbo/model.safetensors",
               "vae/diffusion_pytorch_model.safetensors")
JSON_FILES = ("image_tokenizer/config.json", "image_tokenizer/preprocessor_config.json", "decoder/config.json",
              "decoder-turbo/config.json", "vae/config.json", "special_tokens_map.json", "tokenizer_config.json")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def root_tensors(folder) -> dict:
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


def assert_same_tensors(got: dict, want: dict, label: str):
    assert set(got) == set(want), f"{label}: missing {sorted(set(want) - set(got))[:5]}, " \
                                  f"extra {sorted(set(got) - set(want))[:5]}"
    bad = [key for key in want if not same_bits(got[key], want[key])]
    assert not bad, f"{label}: {len(bad)} tensors differ, e.g. {bad[:5]}"


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def weight_files(folder):
    return [name for name in files_under(folder) if name.endswith(".safetensors")]


@pytest.fixture(scope="module")
def source(parity_checkpoint):
    return parity_checkpoint


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):
    # 400KB: the tiny root (736 kB) is split into two shards, as the original is.
    return export(converted, tmp_path_factory.mktemp("export") / "original", max_shard_size="400KB", quiet=True)


def test_round_trip_reproduces_every_tensor(source, exported):
    assert files_under(exported) == files_under(source)
    assert_same_tensors(root_tensors(exported), root_tensors(source), "root")
    ours = json.loads((exported / "model.safetensors.index.json").read_text())
    theirs = json.loads((source / "model.safetensors.index.json").read_text())
    assert set(ours["weight_map"]) == set(theirs["weight_map"])
    assert ours["metadata"]["total_size"] == theirs["metadata"]["total_size"]
    for name in PIXEL_FILES:
        assert_same_tensors(load_file(str(exported / name)), load_file(str(source / name)), name)
        with safe_open(str(exported / name), "pt") as f:
            assert f.metadata() == {"format": "pt"}
    sigvq = "image_tokenizer/sigvq_embedding.pt"
    got = torch.load(exported / sigvq, map_location="cpu", weights_only=True)
    assert type(got) is dict
    assert list(got) == list(torch.load(source / sigvq, map_location="cpu", weights_only=True))
    assert_same_tensors(got, torch.load(source / sigvq, map_location="cpu", weights_only=True), sigvq)
    for tensor in got.values():  # each tensor saved with its own storage, nothing more
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_config_files_keep_the_original_keys(source, exported):
    for name in JSON_FILES:
        assert json.loads((exported / name).read_text()) == json.loads((source / name).read_text()), name
    assert (exported / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()

    original = json.loads((source / "config.json").read_text())
    ours = json.loads((exported / "config.json").read_text())
    different = {key for key in original if key in ours and ours[key] != original[key]}
    assert different == set(DIFFERENT_ROOT_KEYS), {k: (original[k], ours.get(k)) for k in different}
    assert not set(original) - set(ours)
    assert set(ours) - set(original) == EXTRA_ROOT_KEYS
    assert list(ours)[:3] == ["architectures", "auto_map", "model_type"]


def test_second_conversion_gives_the_same_folder(converted, exported, tmp_path):
    again = convert(exported, tmp_path / "again", quiet=True)
    assert files_under(again) == files_under(converted)
    for name in weight_files(converted):
        assert_same_tensors(load_file(str(again / name)), load_file(str(converted / name)), name)
    first, second = (json.loads((folder / "config.json").read_text()) for folder in (converted, again))
    assert first == second
    subfolders = [SUBFOLDERS[name] for name in ("transformer", "semantic_embedder", "vae")]
    for name in ("preprocessor_config.json", "generation_config.json", "model_index.json",
                 *(f"{folder}/config.json" for folder in subfolders)):
        assert json.loads((again / name).read_text()) == json.loads((converted / name).read_text()), name


def test_text_only(source, tmp_path):
    converted = convert(source, tmp_path / "hf", components="llm", quiet=True)
    exported = export(converted, tmp_path / "original", quiet=True)
    assert files_under(exported) == ["config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                                     "tokenizer_config.json"]
    assert_same_tensors(root_tensors(exported), root_tensors(source), "root")
    original = json.loads((source / "config.json").read_text())
    ours = json.loads((exported / "config.json").read_text())
    assert {key: ours.get(key) for key in original} == original


def test_bf16_export(source, converted, tmp_path, capsys):
    exported = export(converted, tmp_path / "bf16", dtype="bf16")
    assert "bfloat16" in capsys.readouterr().out
    want = root_tensors(source)
    got = root_tensors(exported)
    assert set(got) == set(want)
    biases = [key for key in want if key.endswith("mlp.gate.expert_bias")]
    assert biases
    for key, tensor in want.items():
        expected = tensor if key in biases else tensor.to(torch.bfloat16)
        assert same_bits(got[key], expected), key
    for name in PIXEL_FILES:
        theirs = load_file(str(source / name))
        assert_same_tensors(load_file(str(exported / name)), {k: v.to(torch.bfloat16) for k, v in theirs.items()},
                            name)
    sigvq = torch.load(exported / "image_tokenizer/sigvq_embedding.pt", weights_only=True)
    assert {t.dtype for t in sigvq.values()} == {torch.bfloat16}
    config = json.loads((exported / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"


def test_fine_tuned_save_pretrained_exports(source, converted, tmp_path):
    """A model changed in memory and saved with save_pretrained (no tokenizer, no pixel side) exports; each change
    lands in the right original per-expert matrix."""
    from transformers_llada_uni import LLaDA2UniForConditionalGeneration

    model = LLaDA2UniForConditionalGeneration.from_pretrained(str(converted), dtype=torch.float32)
    experts = model.model.layers[-1].mlp.experts
    inter = experts.gate_up_proj.shape[1] // 2
    layer = len(model.model.layers) - 1
    with torch.no_grad():
        experts.gate_up_proj[2, inter + 1].add_(1.0)  # expert 2, up_proj row 1
        experts.down_proj[5, 0].add_(1.0)  # expert 5, down_proj row 0
    model.save_pretrained(str(tmp_path / "tuned"))
    exported = export(tmp_path / "tuned", tmp_path / "original", quiet=True)
    assert files_under(exported) == ["config.json", "image_tokenizer/config.json", "image_tokenizer/model.safetensors",
                                     "image_tokenizer/preprocessor_config.json", "model.safetensors"]
    got, want = root_tensors(exported), root_tensors(source)
    prefix = f"model.layers.{layer}.mlp.experts"
    changed = {f"{prefix}.2.up_proj.weight": 1, f"{prefix}.5.down_proj.weight": 0}
    for key, row in changed.items():
        want[key] = want[key].clone()
        want[key][row] += 1.0
    assert_same_tensors(got, want, "root")


def test_each_fused_stack_is_read_once():
    """The reader keeps one fused stack at a time and slices every expert out of it."""
    experts, inter, hidden = 3, 2, 4
    store = {"model.layers.1.mlp.experts.gate_up_proj": torch.randn(experts, 2 * inter, hidden),
             "model.layers.1.mlp.experts.down_proj": torch.randn(experts, hidden, inter),
             "model.layers.1.mlp.gate.expert_bias": torch.randn(experts).to(torch.bfloat16)}
    reads = []

    class Source:
        def get(self, key):
            reads.append(key)
            return store[key]

    info = {key: (tuple(t.shape), t.dtype) for key, t in store.items()}
    tensors = plan_llm_export(info, list(store), torch.bfloat16)
    reader = TensorReader(Source())
    built = {t.name: reader.build(t) for t in tensors}
    assert reads == list(store)
    gate_up, down = store["model.layers.1.mlp.experts.gate_up_proj"], store["model.layers.1.mlp.experts.down_proj"]
    for e in range(experts):
        prefix = f"model.layers.1.mlp.experts.{e}"
        assert torch.equal(built[f"{prefix}.gate_proj.weight"], gate_up[e, :inter].to(torch.bfloat16))
        assert torch.equal(built[f"{prefix}.up_proj.weight"], gate_up[e, inter:].to(torch.bfloat16))
        assert torch.equal(built[f"{prefix}.down_proj.weight"], down[e].to(torch.bfloat16))
    assert built["model.layers.1.mlp.gate.expert_bias"].dtype == torch.float32  # never cast down, upcast to fp32


def _corrupt_shard(converted, tmp_path):
    folder = tmp_path / "inputs" / "hf"
    shutil.copytree(converted, folder)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return folder


@pytest.mark.parametrize("case", ["missing", "original_layout", "existing_output", "corrupt_shard"])
def test_refusals_leave_nothing_behind(case, source, converted, tmp_path):
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    output = out_parent / "original"
    hf = {"missing": lambda: tmp_path / "nope", "original_layout": lambda: source,
          "existing_output": lambda: converted, "corrupt_shard": lambda: _corrupt_shard(converted, tmp_path)}[case]()
    if case == "existing_output":
        output.mkdir()
        (output / "keep.txt").write_text("mine")
        (output / "config.json").write_text('{"model_type": "llada2_moe"}')  # a checkpoint: --overwrite may replace it
    before = files_under(out_parent)
    message = {"missing": "does not exist", "original_layout": "original layout already",
               "existing_output": "already exists", "corrupt_shard": "cannot read"}[case]
    with pytest.raises(ConversionError, match=message):
        export(hf, output, quiet=True)
    assert files_under(out_parent) == before
    assert sorted(p.name for p in out_parent.iterdir()) == (["original"] if case == "existing_output" else [])
    if case == "existing_output":  # --overwrite replaces it
        export(hf, output, overwrite=True, quiet=True)
        assert not (output / "keep.txt").exists() and (output / "config.json").is_file()
        assert sorted(p.name for p in out_parent.iterdir()) == ["original"]


def test_command_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "conversion/export_to_original.py", "--hf", str(tmp_path / "missing"), "--output",
         str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=offline_env(),
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --hf ") and "does not exist" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
