#!/usr/bin/env bash
# Every GPU measurement of the project in one run on a GPU machine (see tools/gpu_session.py for
# the steps, their time caps and the drop order). Three commands, start to finish:
#
#   bash benchmarks/prepare_gpu_session.sh             # before: .whl/ and .data/ for an offline GPU machine
#   bash benchmarks/gpu_session.sh                     # on the GPU machine (repository, .whl/, .data/; < 9 min)
#   python -m tools.fold_gpu_session OUT_FOLDER        # after: report, docs/gpu.md tables, benchmarks
#
# On the GPU machine it installs the copied wheels into /tmp/site, points TFDS at the copied data
# and runs `python3 -m tools.gpu_session` (arguments pass through), writing into $OUT.
# SIMJAX_SMOKE=1 runs the same steps on data slices with tiny models, on a CPU, in the caller's
# Python and data environment (TFDS_DATA_DIR holding cifar10/, SIMJAX_MANUAL_DIR the raw
# STS-B files): the test suite does this, so the script cannot rot between GPU runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu_out}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"

if [ "${SIMJAX_SMOKE:-0}" = "0" ]; then
  if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || { echo "error: installing the carried wheels failed" >&2; exit 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/promise-*.tar.gz \
      || { echo "error: installing promise (sdist) failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if [ -d .data/tfds/cifar10 ]; then
    # A writable TFDS data_dir: CIFAR-10 linked in, the sentence datasets prepared beside it.
    export TFDS_DATA_DIR=/tmp/simjax_tfds
    mkdir -p "$TFDS_DATA_DIR"
    [ -e "$TFDS_DATA_DIR/cifar10" ] || ln -s "$PWD/.data/tfds/cifar10" "$TFDS_DATA_DIR/cifar10"
  fi
  [ -d .data/raw ] && export SIMJAX_MANUAL_DIR="$PWD/.data/raw"
  export SIMJAX_CACHE_DIR="${SIMJAX_CACHE_DIR:-/tmp/simjax_cache}"
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" > "$OUT/nvidia-smi.txt"
fi
exec "$PYTHON" -m tools.gpu_session "$@"
