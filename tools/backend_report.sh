#!/usr/bin/env bash
# Train both seed models, sample from them, test and time the Pallas kernels, and run the full benchmark
# on whatever backend JAX finds (run it on a GPU machine to check the GPU path; the bench's rows include
# jaxrnn-pallas there). Results under OUT_DIR: env.txt, summary.txt, log.txt (all stderr),
# kernel_tests.txt, bench.txt, bench.json and runs.tgz (both run directories).
# usage: tools/backend_report.sh OUT_DIR [PYTHON]
set -uo pipefail
out=${1:?usage: tools/backend_report.sh OUT_DIR [PYTHON]}
py=${2:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi -L 2>/dev/null; $py -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__)"; } | tee "$out/env.txt"
for m in scratch concise; do
  start=$(date +%s.%N)
  last=$($py -m jaxrnn.cli train --model "$m" --out "$out/run_$m" --force 2>> "$out/log.txt" | tail -1)
  rc=$?
  end=$(date +%s.%N)
  echo "train $m: exit $rc, process $($py -c "print(round($end - $start, 2))") s: $last" | tee -a "$out/summary.txt"
  echo "sample $m: $($py -m jaxrnn.cli sample --run "$out/run_$m" --num-preds 50 2>> "$out/log.txt")" | tee -a "$out/summary.txt"
done
# the Pallas kernels, compiled for this backend (interpret mode only on a CPU): their tests, then a seed run
$py -m pytest -q -n 0 -p no:cacheprovider tests/test_kernels.py > "$out/kernel_tests.txt" 2>&1
echo "kernel tests: exit $? ($(tail -1 "$out/kernel_tests.txt"))" | tee -a "$out/summary.txt"
start=$(date +%s.%N)
last=$($py -m jaxrnn.cli train --model scratch --kernel pallas --out "$out/run_pallas" --force 2>> "$out/log.txt" | tail -1)
rc=$?
echo "train scratch --kernel pallas: exit $rc, process $($py -c "print(round($(date +%s.%N) - $start, 2))") s: $last" \
  | tee -a "$out/summary.txt"
rm -rf "$out/run_pallas"
$py -m jaxrnn.cli bench --json-out "$out/bench.json" 2>> "$out/log.txt" | tee "$out/bench.txt"
tar -czf "$out/runs.tgz" -C "$out" run_scratch run_concise && rm -rf "$out/run_scratch" "$out/run_concise"
