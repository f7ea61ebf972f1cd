"""save_pretrained writes a folder that plain transformers loads with trust_remote_code, plugin not importable."""

import json

import torch

from conftest import run_without_plugin, tiny_config_kwargs
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM

REMOTE_FILES = {"configuration_llada2_uni.py", "modeling_llada2_moe.py", "generation_llada2_uni.py"}


def _saved_model(tmp_path):
    torch.manual_seed(0)
    model = LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**tiny_config_kwargs())).eval()
    model.save_pretrained(tmp_path)
    return model


def test_saved_folder_carries_code_and_auto_map(tmp_path):
    _saved_model(tmp_path)
    assert REMOTE_FILES <= {p.name for p in tmp_path.glob("*.py")}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llada2_moe"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llada2_uni.LLaDA2MoeConfig",
        "AutoModel": "modeling_llada2_moe.LLaDA2MoeForCausalLM",
        "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeForCausalLM",
    }


def test_auto_classes_load_without_plugin(tmp_path):
    _saved_model(tmp_path)
    # Compare against the same files loaded in-process: identical weights and memory layout on both sides.
    model = LLaDA2MoeForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = torch.tensor([[3, 9, 27, 40, 5, 6, 7]])
    with torch.no_grad():
        logits = model(prompt).logits
    expected_ids = model.generate(prompt, gen_length=9, block_length=4, steps=4, threshold=0.9).tolist()
    torch.save({"prompt": prompt, "logits": logits}, tmp_path / "expected.pt")

    result = run_without_plugin(
        f"""
        import json, torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        folder = {str(tmp_path)!r}
        expected = torch.load(folder + "/expected.pt", weights_only=True)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        report = {{"config_class": type(config).__name__}}
        for auto in (AutoModel, AutoModelForCausalLM):
            model = auto.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
            assert "transformers_modules" in type(model).__module__, type(model).__module__
            with torch.no_grad():
                logits = model(expected["prompt"]).logits
            report[auto.__name__] = {{
                "class": type(model).__name__,
                "max_abs_diff": (logits - expected["logits"]).abs().max().item(),
                "ids": model.generate(expected["prompt"], gen_length=9, block_length=4, steps=4, threshold=0.9).tolist(),
            }}
        print(json.dumps(report))
        """
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["config_class"] == "LLaDA2MoeConfig"
    for name in ("AutoModel", "AutoModelForCausalLM"):
        assert report[name]["class"] == "LLaDA2MoeForCausalLM"
        assert report[name]["max_abs_diff"] < 1e-6
        assert report[name]["ids"] == expected_ids
