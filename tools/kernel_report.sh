#!/usr/bin/env bash
# Issue 21's measurements on one GPU, in one call: the Pallas kernels against the scan path layer by layer
# (tools/kernel_sweep.py: speed, agreement, batch block), the seed config trained by each (`jaxrnn bench`
# with torch's cuDNN beside), greedy decoding against the chapters' way, the kernel count of a seed step,
# the kernel tests compiled for the GPU, and (with LARGE=1) the large shape's LSTM and GRU against cuDNN. Each part has its
# own time limit, so one that hangs or fails leaves the others' results.
# Results under OUT_DIR: summary.txt (the tables), log.txt (stderr), pytest.txt, results.tgz (the JSON).
# usage: tools/kernel_report.sh OUT_DIR [PYTHON]
set -uo pipefail
out=${1:?usage: tools/kernel_report.sh OUT_DIR [PYTHON]}
py=${2:-python3}
mkdir -p "$out/json"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # tools/ import jaxrnn from here
part() {  # part SECONDS TITLE COMMAND...: run a part under a time limit, its stdout to summary.txt
  local limit=$1 title=$2 start=$SECONDS
  shift 2
  echo "== $title" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" 2>> "$out/log.txt" | tee -a "$out/summary.txt"
  echo "== $title: exit ${PIPESTATUS[0]} in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}
part 30 env bash -c "nvidia-smi -L; $py -c \"import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)\""
part 150 "layer sweep" $py tools/kernel_sweep.py --budget 110 --json-out "$out/json/sweep.json"
part 80 "seed config" $py -m jaxrnn.cli bench --cases seed-train --impls jaxrnn-scratch jaxrnn-pallas torch \
  --json-out "$out/json/bench_seed.json"
part 70 "decoding" $py -m jaxrnn.cli bench --quick --cases decode-1 decode-256 \
  --impls jaxrnn-scratch jaxrnn-pallas d2l-way torch --json-out "$out/json/bench_decode.json"
part 40 "kernels per step" $py tools/profile_chunk.py --kernel pallas
part 80 "kernel tests" bash -c "$py -m pytest -q -n 0 -p no:cacheprovider --tb=short tests/test_kernels.py > $out/pytest.txt 2>&1; tail -3 $out/pytest.txt"
[ -n "${LARGE:-}" ] && part 100 "large shape" $py -m jaxrnn.cli bench --quick --cases large-train \
  --impls jaxrnn-scratch torch --cells lstm gru --json-out "$out/json/bench_large.json"
tar -czf "$out/results.tgz" -C "$out" json && rm -rf "$out/json"
