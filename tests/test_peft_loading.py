"""LoRA adapters saved from our models load with plain transformers + peft, plugin not importable:
`AutoPeftModelForCausalLM.from_pretrained(adapter, trust_remote_code=True)` and the snippets of the adapter's model
card, for adapters saved by `save_lora_adapter`, by a plain `get_peft_model` + `save_pretrained`, and by the
Trainer in examples/finetune_lora.py (on a plain copy of the shipped shapes model)."""

import importlib.util
import json
import re
import shutil
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO_ROOT, run_without_plugin, tiny_config_kwargs
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM
from transformers_llada_uni.peft_llada2_uni import TASK_TYPE, get_lora_model, save_lora_adapter

PROMPT = [[5, 6, 7, 8, 9, 10, 11, 12]]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]

# Loads every case of cases.json in one plugin-free interpreter (each start costs seconds): through
# AutoPeftModelForCausalLM, and through each python block of the adapter's README.md, run as written.
_LOAD_SCRIPT = """
import json, re, torch
from pathlib import Path
from peft import AutoPeftModelForCausalLM, get_peft_model_state_dict
from safetensors.torch import load_file


def run_snippet(code):
    namespace = {}
    exec(code, namespace)
    return namespace["model"]


report = {}
for case in json.loads(Path(CASES_JSON).read_text()):
    adapter = Path(case["adapter"])
    expected = torch.load(case["expected"], weights_only=True)
    loaders = {"auto": lambda: AutoPeftModelForCausalLM.from_pretrained(str(adapter), trust_remote_code=True)}
    if case["card"]:
        blocks = re.findall(r"```python\\n(.*?)```", (adapter / "README.md").read_text(), re.DOTALL)
        loaders.update({f"card{k}": lambda code=code: run_snippet(code) for k, code in enumerate(blocks)})
    saved = load_file(adapter / "adapter_model.safetensors")
    for name, load in loaders.items():
        model = load().eval()
        state = get_peft_model_state_dict(model)
        with torch.no_grad():
            logits = model(input_ids=expected["prompt"]).logits
        report[case["name"] + "/" + name] = {
            "base_module": type(model.get_base_model()).__module__,
            "same_keys": sorted(state) == sorted(saved),
            "weights_equal": all(torch.equal(state[k].cpu(), v) for k, v in saved.items() if k in state),
            "max_abs_diff": (logits - expected["logits"]).abs().max().item(),
        }
print(json.dumps(report))
"""


def _load_without_plugin(cases, tmp_path):
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    result = run_without_plugin(_LOAD_SCRIPT.replace("CASES_JSON", repr(str(path))))
    return json.loads(result.stdout.strip().splitlines()[-1])


def _check_report(report, names):
    assert sorted(report) == sorted(names), sorted(report)
    for name, entry in report.items():
        assert "transformers_modules" in entry["base_module"], (name, entry)  # the base's remote code
        assert entry["same_keys"] and entry["weights_equal"], (name, entry)
        assert entry["max_abs_diff"] < 1e-5, (name, entry)


def _front_matter(readme):
    match = re.match(r"---\n(.*?)\n---\n", readme, re.DOTALL)
    assert match, readme[:300]
    return yaml.safe_load(match.group(1))


def _check_card(adapter, base):
    readme = (adapter / "README.md").read_text()
    meta = _front_matter(readme)
    assert meta["library_name"] == "peft" and meta["base_model"] == str(base)
    assert {"llada2", "lora", "masked-diffusion", f"base_model:adapter:{base}"} <= set(meta["tags"])
    assert "Model Card for Model ID" not in readme  # not PEFT's blank template
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) == 2
    assert f'AutoPeftModelForCausalLM.from_pretrained("{adapter.resolve()}", trust_remote_code=True)' in blocks[0]
    assert f'AutoModel.from_pretrained("{base}", trust_remote_code=True)' in blocks[1]
    assert f'PeftModel.from_pretrained(base, "{adapter.resolve()}")' in blocks[1]


def _train(model, steps=2):
    """A few LoRA steps on the masked-diffusion loss, so that lora_B leaves zero and the adapter changes logits."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    batch = torch.tensor(PROMPT * 2)
    model.train()
    for _ in range(steps):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def _expect(model, path):
    prompt = torch.tensor(PROMPT)
    with torch.no_grad():
        logits = model(input_ids=prompt).logits
    torch.save({"prompt": prompt, "logits": logits}, path)
    return logits


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny backbone saved with its remote code, as a user's base folder would be."""
    folder = tmp_path_factory.mktemp("tiny") / "base"
    torch.manual_seed(0)
    LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**tiny_config_kwargs())).save_pretrained(folder)
    return folder


def test_tiny_adapters_load_without_the_plugin(tiny_base, tmp_path):
    from peft import LoraConfig, get_peft_model

    modules = ["query_key_value", "dense", "gate_proj", "up_proj", "down_proj"]
    routes = {
        # our preset (fused experts through target_parameters) and our save helper
        "preset": lambda m: get_lora_model(m, "experts", r=4, lora_alpha=8),
        # plain PEFT with the causal-LM task type, saved by PEFT alone: no helper involved
        "plain": lambda m: get_peft_model(m, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=modules)),
        # plain PEFT without a task type: PEFT records our class, the helper points it at AutoModelForCausalLM
        "taskless": lambda m: get_peft_model(m, LoraConfig(r=4, target_modules=modules, target_parameters=EXPERTS)),
    }
    cases = []
    for name, wrap in routes.items():
        base = LLaDA2MoeForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
        before = _expect(base, tmp_path / "unused.pt")
        model = _train(wrap(base))
        adapter = tmp_path / name
        if name == "plain":
            model.save_pretrained(adapter)
        else:
            save_lora_adapter(model, adapter)
            _check_card(adapter, tiny_base)
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(tiny_base)
        if name == "taskless":
            assert config["task_type"] is None
            assert config["auto_mapping"] == {"base_model_class": "AutoModelForCausalLM",
                                              "parent_library": "transformers"}
        else:
            assert config["task_type"] == TASK_TYPE and config.get("auto_mapping") is None
        after = _expect(model, tmp_path / f"{name}.pt")
        assert not torch.allclose(before, after)  # the adapter is trained: the check below can tell it apart
        cases.append({"name": name, "adapter": str(adapter), "expected": str(tmp_path / f"{name}.pt"),
                      "card": name != "plain"})

    report = _load_without_plugin(cases, tmp_path)
    _check_report(report, ["preset/auto", "preset/card0", "preset/card1", "plain/auto", "taskless/auto",
                           "taskless/card0", "taskless/card1"])


def test_get_lora_model_gives_a_taskless_config_the_causal_lm_type_on_a_copy(tiny_base):
    from peft import LoraConfig

    config = LoraConfig(r=4, target_modules=["query_key_value"])
    model = get_lora_model(LLaDA2MoeForCausalLM.from_pretrained(tiny_base), config)
    assert config.task_type is None and model.peft_config["default"].task_type == TASK_TYPE


def test_finetune_script_adapter_on_a_copied_shapes_model(tmp_path, monkeypatch):
    """The Trainer path (examples/finetune_lora.py, experts preset) on a plain copy of the shipped model, named by a
    relative --model: the saved adapter names the base by its absolute path and loads plugin-free."""
    from peft import AutoPeftModelForCausalLM, PeftModel

    from llada_uni_shapes import model_path
    from transformers_llada_uni import LLaDA2UniForConditionalGeneration

    shapes = tmp_path / "shapes"
    shutil.copytree(model_path(), shapes, symlinks=False)
    _example("make_toy_dataset").make_toy_dataset(tmp_path / "toy", rows=8, seed=0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [
        "finetune_lora.py", "--model", "shapes", "--dataset", "toy", "--output_dir", "adapter", "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--learning_rate", "5e-2", "--save_strategy", "no", "--use_cpu",
        "--report_to", "none", "--block_length", "8", "--understanding_image_mode", "none", "--lora_r", "4",
        "--lora_alpha", "8", "--preset", "experts", "--seed", "0", "--disable_tqdm", "true"])
    _example("finetune_lora").main()

    adapter = tmp_path / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(shapes.resolve()) and config.get("auto_mapping") is None
    assert config["target_parameters"]
    _check_card(adapter, shapes.resolve())

    # In-process references: the plugin's own class under PeftModel, and AutoPeftModel with the plugin imported.
    base = LLaDA2UniForConditionalGeneration.from_pretrained(shapes, dtype=torch.float32).eval()
    before = _expect(base, tmp_path / "before.pt")
    logits = _expect(PeftModel.from_pretrained(base, adapter).eval(), tmp_path / "expected.pt")
    assert not torch.allclose(before, logits)
    auto = AutoPeftModelForCausalLM.from_pretrained(adapter, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=torch.tensor(PROMPT)).logits, logits, atol=1e-5, rtol=0)
    saved = load_file(adapter / "adapter_model.safetensors")
    assert any(".mlp.experts." in k for k in saved) and all(v.abs().sum() > 0 for k, v in saved.items()
                                                             if "lora_B" in k)

    report = _load_without_plugin([{"name": "shapes", "adapter": str(adapter), "expected": str(tmp_path /
                                                                                                 "expected.pt"),
                                    "card": True}], tmp_path)
    _check_report(report, ["shapes/auto", "shapes/card0", "shapes/card1"])


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
