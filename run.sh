#!/usr/bin/env bash
# simjax set-up and entry point.
#   ./run.sh                 create .venv, install requirements.txt, run the default experiment
#                            (GloVe LSTM on STS Benchmark)
#   ./run.sh test [ARGS]     run the test suite (ARGS go to pytest)
#   ./run.sh reproduce [ARGS]  run `python -m experiments.reproduce ARGS` (the whole study, N seeds)
#   ./run.sh benchmark_seeds [ARGS]  run `python -m experiments.benchmark_seeds ARGS`
#   ./run.sh bench [ARGS]    run `python -m experiments.bench ARGS` (CIFAR-10 speed bench)
#   ./run.sh deviceless [ARGS]  compile every run for TPU and GPU without them: memory, roofline
#   ./run.sh fold_gpu_session DIR    fold a GPU benchmark session's output into reports/, benchmarks/, docs/gpu.md
#   ./run.sh ARGS            run `python -m experiments.main ARGS`, e.g. --flagfile=rnn.flags
# Offline: when ../shared exists, its raw sentence datasets are used (SIMJAX_MANUAL_DIR) and
# its prepared TFDS datasets (CIFAR-10) are linked into .data/tensorflow_datasets, which is
# then TFDS_DATA_DIR (writable, so the sentence datasets can be prepared next to them).
# Otherwise TFDS downloads the official files on first use. Set either variable to override.
set -euo pipefail
# Relative paths (--workdir, predict's files, --reports_dir) stay relative to where you run
# this from; only the repository's own files are found through its folder.
REPO="$(cd "$(dirname "$0")" && pwd)"

VENV="${SIMJAX_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.requirements.sha256"
wanted="$(sha256sum "$REPO/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "run.sh: installing requirements.txt into $VENV (first run only; about a minute)..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -qq --upgrade pip
  "$VENV/bin/python" -m pip install -qq -r "$REPO/requirements.txt"
  echo "$wanted" > "$stamp"
fi
# XLA's TPU and GPU compilers (no devices needed) for the deviceless compile checks: a folder of
# their own, on the path only of the tests and `./run.sh deviceless` (requirements-deviceless.txt).
DEVICELESS="$VENV/deviceless"
deviceless_stamp="$DEVICELESS/.requirements.sha256"
deviceless_wanted="$(sha256sum "$REPO/requirements-deviceless.txt" | cut -d' ' -f1)"
install_deviceless() {
  if [ "$(cat "$deviceless_stamp" 2>/dev/null)" != "$deviceless_wanted" ]; then
    echo "run.sh: installing the TPU and GPU compilers into $DEVICELESS (first time only; about 1.2 GB)..." >&2
    rm -rf "$DEVICELESS"
    "$VENV/bin/python" -m pip install -qq --no-deps --target "$DEVICELESS" -r "$REPO/requirements-deviceless.txt"
    echo "$deviceless_wanted" > "$deviceless_stamp"
  fi
  export SIMJAX_DEVICELESS_DIR="$DEVICELESS"
}

if [ -z "${SIMJAX_MANUAL_DIR:-}" ] && [ -d "$REPO/../shared/data" ]; then
  export SIMJAX_MANUAL_DIR="$(cd "$REPO/../shared/data" && pwd)"
fi
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d "$REPO/../shared/tensorflow_datasets" ]; then
  export TFDS_DATA_DIR="$REPO/.data/tensorflow_datasets"
  mkdir -p "$TFDS_DATA_DIR"
  for dataset in "$REPO"/../shared/tensorflow_datasets/*/; do
    link="$TFDS_DATA_DIR/$(basename "$dataset")"
    [ -e "$link" ] || ln -s "$(cd "$dataset" && pwd)" "$link"
  done
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

case "${1:-}" in
  test)
    shift
    install_deviceless
    cd "$REPO"  # pytest.ini and tests/ are found from the repository root
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  deviceless)
    shift
    install_deviceless
    # JAX must start on the CPU with the compilers on its path (simjax.deviceless).
    export JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 ALLOW_MULTIPLE_LIBTPU_LOAD=1 PYTHONPATH="$DEVICELESS:$PYTHONPATH"
    exec "$VENV/bin/python" -m experiments.deviceless "$@"
    ;;
  reproduce | benchmark_seeds | bench)
    module="$1"
    shift
    exec "$VENV/bin/python" -m "experiments.$module" "$@"
    ;;
  fold_gpu_session)  # a maintainers' tool (tools/, not installed): found through the repository
    shift
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m tools.fold_gpu_session "$@"
    ;;
  "")
    exec "$VENV/bin/python" -m experiments.main --flagfile=lstm_glove.flags
    ;;
  *)
    exec "$VENV/bin/python" -m experiments.main "$@"
    ;;
esac
