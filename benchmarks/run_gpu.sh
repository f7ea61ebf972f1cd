#!/usr/bin/env bash
# The benchmarks on one CUDA GPU, bf16, sdpa: generate (mid-size random MoE, all five methods), whether the cache stays
# token-exact there (fp32 and bf16), the MoE layer against the equal-FLOP dense MLP, and the decoder. Logs go to $OUT
# (or ./gpu-logs); each step has its own time limit so that one hang does not take the rest with it.
#
#   bash benchmarks/run_gpu.sh            # about 5 minutes on an H200
#
# Where the machine's transformers / diffusers are older than pyproject.toml asks, put wheels in .whl/ first; they are
# installed into /tmp/site and put first on PYTHONPATH.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
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
step generate 240 $PY benchmarks/bench_generate.py --device cuda --preset mid --dtype bf16 --attn sdpa --repeats 3 \
  --experts-backend "$BACKEND"
step exactness 150 $PY benchmarks/check_cache_exactness.py --device cuda --preset mid --layers 3 --prompt-length 512 \
  --gen-length 256 --noise-runs 3
step moe 60 $PY benchmarks/bench_moe.py --device cuda --dtype bf16 --repeats 200
step moe_512 60 $PY benchmarks/bench_moe.py --device cuda --dtype bf16 --repeats 200 --tokens 512
step decoder 90 $PY benchmarks/bench_decoder.py --device cuda --dtype bf16 --grid 32 --repeats 3
exit $status
