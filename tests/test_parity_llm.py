"""Headline parity check: original checkpoint -> conversion script -> plain transformers (plugin not importable).

The public parity checkpoint (a LLaDA2.0-Uni root) is converted with the command-line script into the composite
`LLaDA2UniForConditionalGeneration`, then a fresh interpreter that cannot import `transformers_llada_uni` loads the
output with `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` (and `AutoModel`) and reproduces the
original code's backbone forward (`expected/llm_forward.pt`) and greedy `generate` runs (`expected/llm_generate.json`)
for both the SDPA and eager attention backends: for text the composite is exactly the backbone. The subprocess prints
one JSON summary that the tests assert on, so a failure shows the numbers. Nothing here depends on the public shapes or
ids: everything comes from the expected files. The image side is checked in test_parity_uni.py.
"""

import json

import pytest
import torch

from conftest import PARITY_DIR, run_without_plugin

LOGITS_ATOL = 1e-4
HIDDEN_ATOL = 1e-5
ROUTER_WEIGHT_ATOL = 1e-6
IMPLEMENTATIONS = ("sdpa", "eager")

_PARITY_SCRIPT = """
import json, re, torch
from transformers import AutoModel, AutoModelForCausalLM

folder, expected_dir, logits_file = {folder!r}, {expected_dir!r}, {logits_file!r}
exp = torch.load(expected_dir + "/llm_forward.pt", weights_only=True)
gen = json.load(open(expected_dir + "/llm_generate.json"))
torch.manual_seed(0)
# One thread: for a model this small, extra OpenMP threads only spin, and under CPU contention they cost 10-100x.
torch.set_num_threads(1)


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def router_report(records, exp):
    # Indices compared as sets per token; weights aligned per expert id.
    idx_bad, weight_diff = 0, 0.0
    for layer, (idx, weight) in enumerate(records):
        want_idx, want_w = exp["router_topk_idx"][layer], exp["router_topk_weight"][layer]
        for token in range(want_idx.shape[0]):
            if set(idx[token].tolist()) != set(want_idx[token].tolist()):
                idx_bad += 1
                continue
            mine = dict(zip(idx[token].tolist(), weight[token].tolist()))
            for expert, value in zip(want_idx[token].tolist(), want_w[token].tolist()):
                weight_diff = max(weight_diff, abs(mine[expert] - value))
    return idx_bad, weight_diff


report = {{}}
saved_logits = {{}}
for impl in {implementations!r}:
    model = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, dtype=torch.float32, attn_implementation=impl
    ).eval()
    entry = {{"class": type(model).__name__, "module": type(model).__module__,
              "loaded_backbone_attn_implementation": model.model.config._attn_implementation}}
    # What the backbone runs is what is compared (see test_parity_uni.py::test_attn_implementation_reaches_the_sub_models).
    model.set_attn_implementation(impl)
    entry["attn_implementation"] = model.model.config._attn_implementation

    gates = [int(re.search(r"layers\\.(\\d+)\\.", name).group(1)) for name in exp["router_layer_names"]]
    records = []

    def hook(module, inputs, output):
        records.append((output[0].detach().clone(), output[1].detach().clone()))

    handles = [model.model.layers[i].mlp.gate.register_forward_hook(hook) for i in gates]
    allowed = exp["attention_allowed_block_causal"]
    additive = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))
    with torch.no_grad():
        out = model(input_ids=exp["input_ids"], attention_mask=allowed, position_ids=exp["position_ids"],
                    output_hidden_states=True)
        for handle in handles:
            handle.remove()
        idx_bad, weight_diff = router_report(records, exp)
        entry["router_layers_hooked"] = len(records)
        entry["router_idx_mismatched_tokens"] = idx_bad
        entry["router_weight_max_diff"] = weight_diff
        entry["logits_block_causal_bool"] = max_diff(out.logits, exp["logits_block_causal"])
        hidden = torch.stack(out.hidden_states)
        entry["hidden_states_shape"] = list(hidden.shape)
        entry["hidden_states_expected_shape"] = list(exp["hidden_states_block_causal"].shape)
        if hidden.shape == exp["hidden_states_block_causal"].shape:
            entry["hidden_states_block_causal"] = max_diff(hidden, exp["hidden_states_block_causal"])
        saved_logits[impl] = out.logits
        out = model(input_ids=exp["input_ids"], attention_mask=additive, position_ids=exp["position_ids"])
        entry["logits_block_causal_additive"] = max_diff(out.logits, exp["logits_block_causal"])
        out = model(input_ids=exp["input_ids"], position_ids=exp["position_ids"])
        entry["logits_full"] = max_diff(out.logits, exp["logits_full"])
        out = model(input_ids=exp["batch2_input_ids"], attention_mask=exp["batch2_attention_allowed"],
                    position_ids=exp["batch2_position_ids"])
        entry["batch2_logits_row1"] = max_diff(out.logits[1:], exp["batch2_logits_row1"])
        entry["batch2_logits_row0"] = max_diff(out.logits[:1], exp["logits_block_causal"])

    prompt = torch.tensor([gen["prompt_ids"]])
    runs = []
    for run in gen["runs_greedy"]:
        for use_block_cache in (False, True):
            result = model.generate(
                prompt, gen_length=run["gen_length"], block_length=run["block_length"], steps=run["steps"],
                threshold=run["threshold"], temperature=0.0, mask_id=gen["mask_id"], eos_id=gen["eos_id"],
                return_dict_in_generate=True, use_block_cache=use_block_cache,
            )
            ids = result.sequences[0, prompt.shape[1]:].tolist()
            first_diff = next((i for i, (a, b) in enumerate(zip(ids, run["output_ids"])) if a != b), None)
            runs.append({{
                "threshold": run["threshold"], "steps": run["steps"], "use_block_cache": use_block_cache,
                "ids_match": ids == run["output_ids"], "first_diff": first_diff,
                "length": len(ids), "expected_length": len(run["output_ids"]),
                "num_forward_passes": result.num_forward_passes, "num_forward_calls": run["num_forward_calls"],
            }})
    entry["generate"] = runs
    report[impl] = entry

model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
with torch.no_grad():
    out = model(input_ids=exp["input_ids"], position_ids=exp["position_ids"])
report["AutoModel"] = {{"class": type(model).__name__, "module": type(model).__module__,
                        "logits_full": max_diff(out.logits, exp["logits_full"])}}

torch.save(saved_logits, logits_file)
print(json.dumps(report))
"""





@pytest.fixture(scope="module")
def plugin_free_report(converted):
    logits_file = converted.parent / "plugin_free_logits.pt"
    script = _PARITY_SCRIPT.format(
        folder=str(converted), expected_dir=str(PARITY_DIR / "expected"), logits_file=str(logits_file),
        implementations=IMPLEMENTATIONS,
    )
    result = run_without_plugin(script)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report, torch.load(logits_file, weights_only=True)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_forward_matches_original(plugin_free_report, impl):
    entry = plugin_free_report[0][impl]
    summary = json.dumps({k: v for k, v in entry.items() if k != "generate"}, indent=1)
    assert entry["class"] == "LLaDA2UniForConditionalGeneration", summary
    assert "transformers_modules" in entry["module"], summary  # the folder's remote code, not the plugin
    assert entry["attn_implementation"] == impl, summary
    for key in ("logits_block_causal_bool", "logits_block_causal_additive", "logits_full", "batch2_logits_row1",
                "batch2_logits_row0"):
        assert entry[key] <= LOGITS_ATOL, f"{key}: {summary}"
    assert entry["hidden_states_shape"] == entry["hidden_states_expected_shape"], summary
    assert entry["hidden_states_block_causal"] <= HIDDEN_ATOL, summary


def test_automodel_loads_the_composite(plugin_free_report):
    entry = plugin_free_report[0]["AutoModel"]
    assert entry["class"] == "LLaDA2UniForConditionalGeneration", entry
    assert "transformers_modules" in entry["module"], entry
    assert entry["logits_full"] <= LOGITS_ATOL, entry


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_router_choices_match_original(plugin_free_report, impl):
    entry = plugin_free_report[0][impl]
    expected = torch.load(PARITY_DIR / "expected" / "llm_forward.pt", weights_only=True)
    summary = json.dumps({k: v for k, v in entry.items() if k.startswith("router")})
    assert entry["router_layers_hooked"] == len(expected["router_layer_names"]), summary
    assert entry["router_idx_mismatched_tokens"] == 0, summary
    assert entry["router_weight_max_diff"] <= ROUTER_WEIGHT_ATOL, summary


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_greedy_generate_matches_original(plugin_free_report, impl):
    runs = plugin_free_report[0][impl]["generate"]
    expected_runs = json.loads((PARITY_DIR / "expected" / "llm_generate.json").read_text())["runs_greedy"]
    assert len(runs) == 2 * len(expected_runs)
    for run in runs:
        assert run["ids_match"], json.dumps(run)
        if not run["use_block_cache"]:
            assert run["num_forward_passes"] == run["num_forward_calls"], json.dumps(run)


def test_plugin_loader_gives_the_same_logits(converted, plugin_free_report):
    """In-process, with the plugin: `AutoModelForCausalLM.from_pretrained(out)` gives the plugin's composite, which
    matches the fixture and the plugin-free run."""
    from transformers import AutoModelForCausalLM
    from transformers_llada_uni import LLaDA2UniForConditionalGeneration

    expected = torch.load(PARITY_DIR / "expected" / "llm_forward.pt", weights_only=True)
    for impl in IMPLEMENTATIONS:
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32, attn_implementation=impl).eval()
        assert type(model) is LLaDA2UniForConditionalGeneration
        model.set_attn_implementation(impl)
        with torch.no_grad():
            logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_allowed_block_causal"],
                           position_ids=expected["position_ids"]).logits
        assert (logits - expected["logits_block_causal"]).abs().max().item() <= LOGITS_ATOL
        # Same code, but the thread count may differ from the subprocess's, so summation order (not the result) may.
        torch.testing.assert_close(logits, plugin_free_report[1][impl], atol=LOGITS_ATOL, rtol=0)


def test_written_generation_config_drives_generate(converted):
    """generate() without `mask_id` / `eos_id` arguments: the ids come from the written generation_config.json,
    which from_pretrained loads as a LLaDA2GenerationConfig (or passed explicitly)."""
    from transformers import GenerationConfig
    from transformers_llada_uni import LLaDA2GenerationConfig, LLaDA2UniForConditionalGeneration

    gen = json.loads((PARITY_DIR / "expected" / "llm_generate.json").read_text())
    run = gen["runs_greedy"][0]
    model = LLaDA2UniForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    assert isinstance(model.generation_config, LLaDA2GenerationConfig)
    loaded = model.generation_config
    assert (loaded.mask_token_id, loaded.steps, loaded.threshold, loaded.temperature) == (gen["mask_id"], 32, 0.95, 0.0)
    generation_config = GenerationConfig.from_pretrained(converted)
    assert (generation_config.mask_token_id, generation_config.eos_token_id) == (gen["mask_id"], gen["eos_id"])
    prompt = torch.tensor([gen["prompt_ids"]])
    settings = dict(gen_length=run["gen_length"], steps=run["steps"], threshold=run["threshold"])
    for out in (model.generate(prompt, generation_config=generation_config, **settings),
                model.generate(prompt, **settings)):
        assert out[0, prompt.shape[1]:].tolist() == run["output_ids"]
