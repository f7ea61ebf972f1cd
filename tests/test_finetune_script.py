"""examples/finetune_lora.py end to end on the converted tiny checkpoint (random weights) and a toy `datasets` folder:
one process, two gloo DDP processes under `accelerate launch` (the ranks must agree on the adapter), early errors for
bad input, and the accelerate configs of examples/accelerate/ (the GPU ones are only parsed and resolved here)."""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, offline_env, tiny_config_kwargs

SCRIPT = REPO_ROOT / "examples" / "finetune_lora.py"
CONFIGS = REPO_ROOT / "examples" / "accelerate"


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy-dataset"
    _load_example("make_toy_dataset").make_toy_dataset(path, rows=16, seed=0)
    return path


def _env():
    env = offline_env()
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _flags(converted, dataset, output, steps):
    return ["--model", str(converted), "--dataset", str(dataset), "--output_dir", str(output), "--max_steps",
            str(steps), "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--logging_steps", "2",
            "--save_strategy", "no", "--use_cpu", "--report_to", "none", "--block_length", "8",
            "--understanding_image_mode", "none", "--lora_r", "4", "--lora_alpha", "8", "--seed", "0"]


def _run(command, cwd):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _trained(state):
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    return lora_b and all(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero


def test_single_process_trains_saves_and_reloads(converted, toy_dataset, tmp_path):
    from peft import PeftModel

    from transformers_llada_uni import LLaDA2UniForConditionalGeneration, LLaDA2UniProcessor

    out = tmp_path / "adapter"
    result = _run([sys.executable, str(SCRIPT), *_flags(converted, toy_dataset, out, 10), "--preset", "experts",
                   "--complementary_masking"], cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == f"adapter saved to {out}"
    assert "'loss'" in result.stdout + result.stderr  # the Trainer's logging
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_parameters"] and config["lora_dropout"] == 0.0
    saved = load_file(out / "adapter_model.safetensors")
    assert _trained(saved) and any(".mlp.experts." in k for k in saved)

    base = LLaDA2UniForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        model = PeftModel.from_pretrained(base, out).eval()
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, after)
    LLaDA2UniProcessor.from_pretrained(out)  # the processor is saved beside the adapter


def test_gradient_checkpointing_trains_from_the_first_step(toy_dataset, tmp_path):
    # The grouped-matmul autograd probe first runs inside the first checkpointed forward of the process; it used to
    # save tensors there that the recomputation did not (CheckpointError "87 vs 84" on step 1). The shipped shapes
    # model has 16-byte aligned experts, so its experts take grouped_mm and the probe runs.
    shapes = REPO_ROOT / "src" / "llada_uni_shapes" / "model"
    out = tmp_path / "checkpointed"
    result = _run([sys.executable, str(SCRIPT), *_flags(shapes, toy_dataset, out, 2), "--gradient_checkpointing"],
                  cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == f"adapter saved to {out}"
    assert _trained(load_file(out / "adapter_model.safetensors"))


def test_accelerate_ddp_two_processes_agree(converted, toy_dataset, tmp_path):
    # `accelerate launch --cpu --num_processes 2` would start ONE process (accelerate's multi-CPU launcher is mpirun);
    # torchrun (`--multi_gpu`) starts two, and the script's --use_cpu keeps them on the CPU with gloo.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    cli = Path(sys.executable).with_name("accelerate")
    launch = [str(cli), "launch"] if cli.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    result = _run([*launch, "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
                   str(SCRIPT), *_flags(converted, toy_dataset, out, 6), "--save_rank_adapters"], cwd=tmp_path)
    assert "[rank 0/2]" in result.stderr and "[rank 1/2]" in result.stderr, result.stderr[-3000:]
    assert result.stdout.count("adapter saved to") == 1
    ranks = [load_file(out / f"rank{k}.safetensors") for k in range(2)]
    saved = load_file(out / "adapter_model.safetensors")
    assert _trained(saved) and sorted(ranks[0]) == sorted(ranks[1]) == sorted(saved)
    for name, tensor in saved.items():
        assert torch.equal(ranks[0][name], tensor) and torch.equal(ranks[1][name], tensor), name


def test_collator_ignores_none_columns_of_mixed_tables(converted):
    # A `datasets` table gives every row every column, None where a row's task does not use it.
    from transformers_llada_uni import LLaDA2UniDataCollator, LLaDA2UniProcessor

    collator = LLaDA2UniDataCollator(LLaDA2UniProcessor.from_pretrained(converted), block_length=8)
    blank = dict.fromkeys(["messages", "image", "image_tokens", "question", "answer", "prompt", "response",
                           "instruction", "target_image", "target_image_tokens"])
    rows = [{**blank, "prompt": "hi", "response": "hello"},
            {**blank, "prompt": "a cat", "target_image_tokens": [[1, 2], [3, 4]]},
            {**blank, "image_tokens": [[1, 2], [3, 4]], "question": "What?", "answer": "red"}]
    assert [collator.task_of(row, i) for i, row in enumerate(rows)] == ["text", "text-to-image", "understanding"]
    assert collator(rows)["labels"].shape[0] == 3
    with pytest.raises(ValueError, match=r"row 0 \(understanding\): .*image \(or image_tokens\); fields given: "
                                         r"answer, question\."):
        collator([{**blank, "question": "What?", "answer": "red"}])


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def script():
    return _load_example("finetune_lora")


def _bad_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing model", r"--model .*nope: no config.json"),
        ("missing dataset", r"--dataset .*nope does not exist"),
        ("empty dataset", r"--dataset .*empty.* is empty"),
        ("row missing a field", r"row 1 \(text\): missing or empty field\(s\) response"),
    ],
)
def test_bad_input_exits_with_a_message(script, converted, toy_dataset, tmp_path, monkeypatch, case, match):
    model, dataset = converted, toy_dataset
    if case == "missing model":
        model = tmp_path / "nope"
    elif case == "missing dataset":
        dataset = tmp_path / "nope"
    elif case == "empty dataset":
        dataset = _bad_rows(tmp_path / "empty.jsonl", [])  # (datasets cannot reload a saved 0-row Dataset)
    else:
        dataset = _bad_rows(tmp_path / "rows.jsonl", [{"prompt": "hi", "response": "hello"}, {"prompt": "hey"}])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["finetune_lora.py", *_flags(model, dataset, tmp_path / "out", 1)])
    with pytest.raises(SystemExit) as error:
        script.main()
    assert isinstance(error.value.code, str)  # a message: the interpreter exits with status 1
    assert error.value.code.startswith("finetune_lora.py: error:") and re.search(match, error.value.code), \
        error.value.code
    assert not (tmp_path / "out").exists()


def test_unknown_preset_is_a_usage_error(script, converted, toy_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["finetune_lora.py", *_flags(converted, toy_dataset, tmp_path, 1), "--preset",
                                      "everything"])
    with pytest.raises(SystemExit) as error:
        script.main()
    assert error.value.code == 2 and "invalid choice: 'everything'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- configs


def _launch_args(name):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), str(SCRIPT)])
    return _validate_launch_command(args)


def test_ddp_cpu_config_starts_two_torchrun_processes():
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(CONFIGS / "ddp_cpu.yaml")).num_processes == 2
    args, _, _ = _launch_args("ddp_cpu.yaml")  # the same launcher as the DDP test's flags
    assert args.multi_gpu and not args.cpu and args.num_processes == 2 and args.mixed_precision == "no"


def test_fsdp_config_resolves_fsdp2_wrapping_decoder_layers(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.launch import prepare_multi_gpu_env

    from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM
    from transformers_llada_uni.peft_llada2_uni import get_lora_model

    args, _, _ = _launch_args("fsdp_gpu.yaml")
    assert args.use_fsdp and args.mixed_precision == "bf16"
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["LLaDA2MoeDecoderLayer"]
    model = get_lora_model(LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**tiny_config_kwargs())), "default")
    wrap = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [m for m in model.modules() if wrap(m)]
    assert len(wrapped) == 3 and {type(m).__name__ for m in wrapped} == {"LLaDA2MoeDecoderLayer"}


def test_deepspeed_config_resolves_zero3(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    monkeypatch.chdir(REPO_ROOT)  # the yaml names ds_zero3.json relative to the repository root
    args, defaults, _ = _launch_args("deepspeed_zero3_gpu.yaml")
    assert args.use_deepspeed
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as `launch_command` does
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] and plugin.deepspeed_config["bf16"]["enabled"] == "auto"
    assert os.path.isfile(CONFIGS / "ds_zero3.json")
