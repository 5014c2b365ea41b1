#!/usr/bin/env bash
# Issue 21's measurements on one GPU, in one call: the Pallas kernels against the scan path layer by layer
# (tools/kernel_sweep.py: speed, agreement, batch block), the seed config trained by each (`jaxrnn bench`
# with torch's cuDNN beside), greedy decoding against the chapters' way, the kernel count of a seed step,
# the kernel tests compiled for the GPU, and (part `large`) the large shape (hidden 1024, batch 128, 256 steps: the
# per-step kernels) trained by the scan path, the kernels and cuDNN, at TF32 and in bfloat16. Each part has its
# own time limit, so one that hangs or fails leaves the others' results.
# PARTS names the parts to run (default: all but large, about 9 minutes at most; large alone about 5).
# Results under OUT_DIR: summary.txt (the tables), log.txt (stderr), pytest.txt, results.tgz (the JSON).
# usage: [PARTS="env sweep seed decode profile tests large"] tools/kernel_report.sh OUT_DIR [PYTHON]
set -uo pipefail
out=${1:?usage: tools/kernel_report.sh OUT_DIR [PYTHON]}
py=${2:-python3}
mkdir -p "$out/json"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # tools/ import jaxrnn from here
parts=" ${PARTS:-env sweep seed decode profile tests} "
part() {  # part NAME SECONDS TITLE COMMAND...: run a part named in PARTS under a time limit, its stdout to summary.txt
  [[ $parts == *" $1 "* ]] || return 0
  local limit=$2 title=$3 start=$SECONDS
  shift 3
  echo "== $title" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" 2>> "$out/log.txt" | tee -a "$out/summary.txt"
  echo "== $title: exit ${PIPESTATUS[0]} in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}
part env 30 env bash -c "nvidia-smi -L; $py -c \"import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)\""
part sweep 240 "layer sweep" $py tools/kernel_sweep.py --budget 200 --json-out "$out/json/sweep.json"
part seed 80 "seed config" $py -m jaxrnn.cli bench --cases seed-train --impls jaxrnn-scratch jaxrnn-pallas torch \
  --json-out "$out/json/bench_seed.json"
part decode 70 "decoding" $py -m jaxrnn.cli bench --quick --cases decode-1 decode-256 \
  --impls jaxrnn-scratch jaxrnn-pallas d2l-way torch --json-out "$out/json/bench_decode.json"
part profile 40 "kernels per step" $py tools/profile_chunk.py --kernel pallas
part tests 80 "kernel tests" bash -c "$py -m pytest -q -n 0 -p no:cacheprovider --tb=short tests/test_kernels.py > $out/pytest.txt 2>&1; tail -3 $out/pytest.txt"
for dtype in float32 bfloat16; do
  part large 150 "large shape, $dtype" $py -m jaxrnn.cli bench --quick --cases large-train \
    --impls jaxrnn-scratch jaxrnn-pallas torch --cells rnn lstm gru --precision default --dtype $dtype \
    --json-out "$out/json/bench_large_$dtype.json"
done
tar -czf "$out/results.tgz" -C "$out" json && rm -rf "$out/json"
