#!/usr/bin/env bash
# Run benchmarks/scail2_bench.py on a lent GPU machine (see docs/PERFORMANCE.md for the calls we made).
# The device image has torch + CUDA but not diffusers: the wheels in .whl/ (diffusers 0.42.1,
# transformers 5.24.0, importlib_metadata, regex, ftfy, wcwidth) travel with the call (carry: [".whl"]).
#   bash benchmarks/run_device.sh NAME [scail2_bench.py arguments...]
# writes $OUT/NAME.json and $OUT/NAME.log.
set -o pipefail
name=$1; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv | tee "$out/$name.log"
python3 benchmarks/scail2_bench.py --label "$name" --out "$out/$name.json" "$@" 2>&1 | tee -a "$out/$name.log"
