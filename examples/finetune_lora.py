"""LoRA fine-tuning of a converted LLaDA2.0-Uni checkpoint with the stock `Trainer` (masked-diffusion objective).

Rows (text, understanding, text-to-image, editing; formats in docs/finetuning.md) come from a `datasets` folder
(`save_to_disk`), a local json / jsonl / csv / parquet file, or a Hub dataset name. Every `TrainingArguments` flag
works (`--learning_rate`, `--max_steps`, `--bf16`, `--gradient_checkpointing`, `--logging_steps`, ...). The adapter,
the processor and a model card that says how to load them (README.md) are written to `--output_dir`.

Single process:
    python examples/finetune_lora.py --model path/to/converted --dataset path/to/dataset --output_dir lora-out \
        --per_device_train_batch_size 4 --max_steps 1000 --learning_rate 1e-4 --dtype bf16 --bf16

Data parallel (DDP), the same script; on CPUs with gloo (torchrun starts the processes; `accelerate launch --cpu
--num_processes 2` would start only one, as accelerate's multi-CPU launcher is mpirun):
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_lora.py --use_cpu ...
    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml examples/finetune_lora.py --use_cpu ...
GPUs (FSDP2 / DeepSpeed ZeRO-3; these configs are written for GPUs but have not been run on one, see
docs/finetuning.md):
    accelerate launch --config_file examples/accelerate/fsdp_gpu.yaml examples/finetune_lora.py --dtype bf16 --bf16 ...
    accelerate launch --config_file examples/accelerate/deepspeed_zero3_gpu.yaml examples/finetune_lora.py ...

Try it on toy data: `python examples/make_toy_dataset.py --output toy-dataset`, then `--dataset toy-dataset`.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from transformers_llada_uni import LLaDA2UniDataCollator, LLaDA2UniForConditionalGeneration, LLaDA2UniProcessor
from transformers_llada_uni.peft_llada2_uni import PRESETS, finish_adapter_folder, get_lora_model
from transformers_llada_uni.training_llada2_uni import DIFFUSION_OBJECTIVES, WEIGHTINGS


@dataclass
class ModelDataArguments:
    model: str = field(metadata={"help": "converted LLaDA2.0-Uni checkpoint folder"})
    dataset: str = field(metadata={"help": "datasets.save_to_disk folder, json/jsonl/csv/parquet file, or Hub name"})
    split: str = field(default="train", metadata={"help": "dataset split"})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name"})
    preset: str = field(default="default", metadata={"help": "LoRA targets", "choices": list(PRESETS)})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = field(default=0.05, metadata={"help": "forced to 0 by the 'experts' preset"})
    dtype: str = field(default="fp32", metadata={"help": "weights dtype", "choices": ["fp32", "bf16"]})
    save_rank_adapters: bool = field(default=False, metadata={
        "help": "every process also writes its adapter to <output_dir>/rank<k>.safetensors (checks DDP agreement)"})


@dataclass
class DiffusionArguments:
    # The collator gives clean sequences, which only the masked-diffusion objectives noise ("cross_entropy" would not).
    objective: str = field(default="block", metadata={"choices": list(DIFFUSION_OBJECTIVES)})
    block_length: Optional[int] = field(default=None, metadata={"help": "default: the config's (32)"})
    max_length: Optional[int] = field(default=None, metadata={"help": "reject longer rows"})
    mask_ratio_min: float = 0.001
    mask_ratio_max: float = 1.0
    loss_weighting: str = field(default="inverse_t", metadata={"choices": list(WEIGHTINGS)})
    complementary_masking: bool = False
    image_mode: str = field(default="edit", metadata={"help": "image path of image targets and edit sources"})
    understanding_image_mode: str = field(default="understanding", metadata={"help": "image path of inputs"})


def fail(message):
    raise SystemExit(f"finetune_lora.py: error: {message}")


def load_rows(args: ModelDataArguments):
    import datasets

    path = Path(args.dataset).expanduser()
    try:
        if path.is_dir() and any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json")):
            rows = datasets.load_from_disk(str(path))
            if isinstance(rows, datasets.DatasetDict):
                if args.split not in rows:
                    fail(f"--dataset {path} has splits {sorted(rows)}, not --split {args.split!r}")
                rows = rows[args.split]
        elif path.is_file():
            if path.stat().st_size == 0:
                fail(f"--dataset {path} is empty")
            builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
            if builder is None:
                fail(f"--dataset {path}: unknown file type {path.suffix!r} (json, jsonl, csv, parquet)")
            rows = datasets.load_dataset(builder, data_files={args.split: str(path)}, split=args.split)
        elif path.is_dir():
            rows = datasets.load_dataset(str(path), args.dataset_config, split=args.split)
        elif args.dataset.startswith((".", "/", "~")) or args.dataset.count("/") > 1:
            fail(f"--dataset {args.dataset} does not exist")
        else:
            rows = datasets.load_dataset(args.dataset, args.dataset_config, split=args.split)
    except SystemExit:
        raise
    except Exception as error:  # offline, unknown name, unreadable file: say which flag
        fail(f"could not load --dataset {args.dataset} (split {args.split!r}): {type(error).__name__}: {error}")
    for column in ("image", "target_image"):  # image paths in json / csv files -> decoded images
        feature = rows.features.get(column)
        if isinstance(feature, datasets.Value) and feature.dtype == "string":
            rows = rows.cast_column(column, datasets.Image())
    if len(rows) == 0:
        fail(f"--dataset {args.dataset} (split {args.split!r}) is empty")
    return rows


def main():
    world = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ and not any(
            name in os.environ for name in world):
        print("warning: `accelerate launch --cpu --num_processes N` starts ONE process unless given "
              "--mpirun_hostfile; for N processes on CPUs use `--multi_gpu --num_processes N` (torchrun, gloo) "
              "with --use_cpu, or examples/accelerate/ddp_cpu.yaml.", file=sys.stderr)
    parser = HfArgumentParser((ModelDataArguments, DiffusionArguments, TrainingArguments))
    args, diffusion, training = parser.parse_args_into_dataclasses()
    model_dir = Path(args.model).expanduser()
    if not (model_dir / "config.json").is_file():
        fail(f"--model {model_dir}: no config.json there (expected a converted LLaDA2.0-Uni folder)")
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if model_type != LLaDA2UniForConditionalGeneration.config_class.model_type:
        fail(f"--model {model_dir} is a {model_type!r} checkpoint; this script trains LLaDA2.0-Uni folders")
    training.remove_unused_columns = False  # the collator reads raw columns (image, question, ...)
    training.label_names = training.label_names or ["labels"]
    if training.ddp_find_unused_parameters is None:
        training.ddp_find_unused_parameters = False  # every adapter takes part in every step
    if training.gradient_checkpointing and training.gradient_checkpointing_kwargs is None:
        training.gradient_checkpointing_kwargs = {"use_reentrant": False}  # frozen embeddings: no input grads

    rows = load_rows(args)
    processor = LLaDA2UniProcessor.from_pretrained(model_dir)
    config = LLaDA2UniForConditionalGeneration.config_class.from_pretrained(model_dir)
    block_length = diffusion.block_length or config.get_text_config().block_length
    collator = LLaDA2UniDataCollator(processor, block_length=block_length, max_length=diffusion.max_length,
                                     image_mode=diffusion.image_mode,
                                     understanding_image_mode=diffusion.understanding_image_mode)
    try:  # fail before loading the model when the rows do not fit the collator
        collator([rows[i] for i in range(min(len(rows), training.per_device_train_batch_size))])
    except ValueError as error:
        fail(f"--dataset {args.dataset}: {error}")

    set_seed(training.seed)  # the same LoRA initialisation in every process
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = LLaDA2UniForConditionalGeneration.from_pretrained(model_dir, config=config, dtype=dtype)
    model.config.get_text_config().diffusion_training = {
        "objective": diffusion.objective, "block_length": block_length, "mask_ratio_min": diffusion.mask_ratio_min,
        "mask_ratio_max": diffusion.mask_ratio_max, "loss_weighting": diffusion.loss_weighting,
        "complementary_masking": diffusion.complementary_masking,
    }
    model = get_lora_model(model, args.preset, r=args.lora_r, lora_alpha=args.lora_alpha,
                           lora_dropout=args.lora_dropout)
    if training.process_index == 0:
        model.print_trainable_parameters()

    trainer = Trainer(model=model, args=training, train_dataset=rows, data_collator=collator)
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    output_dir = Path(training.output_dir)
    trainer.save_model(str(output_dir))  # the adapter only (PEFT); gathers shards under FSDP / ZeRO-3
    if args.save_rank_adapters:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        state = get_peft_model_state_dict(trainer.model)
        output_dir.mkdir(parents=True, exist_ok=True)  # rank 0 may not have created it yet
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                  str(output_dir / f"rank{training.process_index}.safetensors"))
        print(f"[rank {training.process_index}/{training.world_size}] adapter state written", file=sys.stderr)
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(output_dir))
        # save_model left PEFT's blank README.md: write the card, and an adapter_config.json that loads plugin-free.
        finish_adapter_folder(output_dir, adapter_id=training.hub_model_id)
        print(f"adapter saved to {output_dir}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
