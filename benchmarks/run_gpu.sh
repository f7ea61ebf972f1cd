#!/usr/bin/env bash
# The benchmarks on one CUDA GPU, bf16, sdpa: generate (mid-size random MoE, all five methods), whether the cache stays
# token-exact there (fp32 and bf16, sdpa and eager), the MoE layer against the equal-FLOP dense MLP, the decoder, and
# training: FSDP2 / ZeRO-3 against one process (check_distributed.py), the FSDP2 accelerate config with the LoRA
# script, and the peak memory of a LoRA step on the mid preset. Logs go to $OUT (or ./gpu-logs); each step has its own
# time limit so that one hang does not take the rest with it.
#
#   bash benchmarks/run_gpu.sh                        # every step, about 9 minutes on an H200 (estimate)
#   bash benchmarks/run_gpu.sh issue20                # exactness, distributed, fsdp_lora, lora_mid (~4 minutes)
#   bash benchmarks/run_gpu.sh generate moe           # named steps only (a device call may run 10 minutes at most)
#
# Where the machine's packages are older than pyproject.toml asks or missing (peft, accelerate, deepspeed), run
# `bash benchmarks/gpu_wheels.sh` here first and carry .whl/; they are installed into /tmp/site and put first on
# PYTHONPATH.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  # By name from .whl/ (not every file): pip picks the build that fits this Python (gpu_wheels.sh fetches several).
  names=$(ls .whl/*.whl | sed 's|.*/||; s|-.*||' | sort -u)
  $PY -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site $names || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:src:${PYTHONPATH:-}
else
  export PYTHONPATH=src:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/machine.txt"
$PY - <<'PY' 2>&1 | tee -a "$OUT/machine.txt"
import torch, transformers, diffusers, torch.nn.functional as F
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__,
      "diffusers", diffusers.__version__, torch.cuda.get_device_name(0))
x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
w = torch.randn(8, 512, 256, device="cuda", dtype=torch.bfloat16)
offs = torch.arange(8, 65, 8, device="cuda", dtype=torch.int32)
try:
    print("grouped_mm on cuda:", tuple(F.grouped_mm(x, w.transpose(1, 2), offs=offs).shape))
except Exception as error:  # the generate benchmark then uses the per-expert loop
    print("grouped_mm on cuda failed:", type(error).__name__, str(error)[:200])
PY
status=0
step() {  # step NAME SECONDS command...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "== $name exited $rc"; status=1; }
  return "$rc"
}
# The per-expert loop only where grouped_mm failed above (bench_generate also exits 1 when tokens differ).
BACKEND=auto
grep -q "grouped_mm on cuda failed" "$OUT/machine.txt" && BACKEND=loop
ALL="generate exactness moe moe_512 decoder distributed fsdp_lora lora_mid"
WANT=${*:-$ALL}
WANT=${WANT/issue20/exactness distributed fsdp_lora lora_mid}
wanted() { [[ " $WANT " == *" $1 "* ]]; }
wanted generate && step generate 240 $PY benchmarks/bench_generate.py --device cuda --preset mid --dtype bf16 \
  --attn sdpa --repeats 3 --experts-backend "$BACKEND"
# The whole mid model (6 layers), as in `generate`, whose bf16 cached run took 60 forwards to the baseline's 90 on an
# H200: the four dtype x attention cases say whether fp32 is exact there (a real defect if not) and which kernel moves
# bf16; the noise runs give the spread that rounding alone causes.
wanted exactness && step exactness 240 $PY benchmarks/check_cache_exactness.py --device cuda --preset mid \
  --prompt-length 512 --gen-length 256 --noise-runs 3 --cases fp32:sdpa,fp32:eager,bf16:sdpa,bf16:eager
wanted moe && step moe 60 $PY benchmarks/bench_moe.py --device cuda --dtype bf16 --repeats 200
wanted moe_512 && step moe_512 60 $PY benchmarks/bench_moe.py --device cuda --dtype bf16 --repeats 200 --tokens 512
wanted decoder && step decoder 90 $PY benchmarks/bench_decoder.py --device cuda --dtype bf16 --grid 32 --repeats 3
# FSDP2 (and ZeRO-3 where deepspeed imports) on one GPU against one plain process: the CPU check's engines on CUDA.
wanted distributed && step distributed 240 $PY benchmarks/check_distributed.py --device cuda --nproc 1 \
  --workdir "$OUT/distributed"
# examples/accelerate/fsdp_gpu.yaml itself, through accelerate and the Trainer (the CPU cannot run accelerate's FSDP).
if wanted fsdp_lora; then
  if $PY -c "import datasets, peft, accelerate" 2>/dev/null; then
    step toy_data 60 $PY examples/make_toy_dataset.py --output "$OUT/toy-dataset" &&
    step fsdp_lora 180 $PY -m accelerate.commands.launch --config_file examples/accelerate/fsdp_gpu.yaml \
      --num_processes 1 examples/finetune_lora.py --model src/llada_uni_shapes/model --dataset "$OUT/toy-dataset" \
      --output_dir "$OUT/fsdp-lora" --max_steps 5 --per_device_train_batch_size 2 --logging_steps 1 --bf16 \
      --dtype bf16 --save_strategy no --report_to none --understanding_image_mode none --block_length 8 \
      --lora_r 4 --lora_alpha 8 --learning_rate 1e-2 --seed 0
  else
    echo "== fsdp_lora skipped: datasets / peft / accelerate do not import" | tee "$OUT/fsdp_lora.log"; status=1
  fi
fi
wanted lora_mid && step lora_mid 180 $PY benchmarks/bench_train_step.py --device cuda --preset mid --dtype bf16 \
  --lora default --backends "$BACKEND" --repeats 3
exit $status
