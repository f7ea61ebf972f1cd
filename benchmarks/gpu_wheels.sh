#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach the network, into .whl/ (carry it with the run; run_gpu.sh installs them
# into /tmp/site): this venv's versions of the Hub libraries, PEFT, accelerate and DeepSpeed with its small
# dependencies. msgpack is a compiled wheel, so it is fetched for several Pythons; run_gpu.sh picks the one that fits.
# DeepSpeed is published as a source archive only; it is built here into a pure-Python wheel (ops compile at run time).
#
#   bash benchmarks/gpu_wheels.sh        # about 20 MB
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
pin() { $PY -c "from importlib.metadata import version; print('$1==' + version('$1'))"; }
pure="transformers diffusers peft accelerate hjson py-cpuinfo einops ninja"
$PY -m pip download -q --no-deps --only-binary :all: -d .whl $(for name in $pure; do pin "$name"; done)
for python in 3.10 3.11 3.12 3.13; do
  $PY -m pip download -q --no-deps --only-binary :all: --python-version "$python" -d .whl "$(pin msgpack)"
done
$PY -m pip wheel -q --no-deps --no-build-isolation -w .whl "$(pin deepspeed)"
du -sh .whl && ls .whl
