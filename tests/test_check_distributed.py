"""benchmarks/check_distributed.py: FSDP2 on 2 CPU processes (gloo) against one process, LoRA and full fine-tuning of
the shipped shapes model, in its quick size (2 steps; the 5-step run with ZeRO-3 is in docs/finetuning.md)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, offline_env


def test_quick_fsdp2_matches_one_process_and_reloads(tmp_path):
    env = offline_env()
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "check_distributed.py"), "--quick",
                             "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=400, env=env,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["fsdp2_lora_rel_diff"] <= 1e-3 and summary["fsdp2_full_rel_diff"] <= 1e-3
    assert summary["fsdp2_reload_ok"] is True and summary["steps"] == 2 and summary["nproc"] == 2
    # The weights really are split: rank 0 stores about half of them.
    assert summary["fsdp2_lora_rank0_share"] < 0.75 and summary["fsdp2_full_rank0_share"] < 0.75
    saved = json.loads((tmp_path / "fsdp2" / "full" / "config.json").read_text())
    assert all(not value.startswith("_fsdp") for value in saved["auto_map"].values())  # see distributed_worker.save


def test_bundle_check_names_an_auto_map_module_that_is_not_saved(tmp_path):
    from benchmarks.check_distributed import bundle_problems

    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {
        "AutoModel": "modeling_x.X", "AutoModelForCausalLM": "_fsdp_init.FSDPX"}}))
    (tmp_path / "modeling_x.py").write_text("")
    assert bundle_problems(tmp_path) == [
        "auto_map AutoModelForCausalLM -> _fsdp_init.FSDPX: no _fsdp_init.py in the folder"]


def test_zero3_config_fills_every_auto_value():
    from benchmarks.distributed_worker import zero3_config

    config = zero3_config(REPO_ROOT / "examples" / "accelerate" / "ds_zero3.json", micro_steps=2, world=2, hidden=128)
    assert "auto" not in json.dumps(config)
    assert config["train_batch_size"] == 4 and config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"]["stage"] == 3 and config["bf16"] == {"enabled": False}


def test_worker_refuses_a_reference_under_torchrun(monkeypatch):
    from benchmarks import distributed_worker

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="without torchrun"):
        distributed_worker.main(["--engine", "none", "--model", "m", "--rows", "r", "--out", "o"])
