#!/usr/bin/env bash
# simjax set-up and entry point.
#   ./run.sh                 create .venv, install requirements.txt, run the default experiment
#                            (GloVe LSTM on STS Benchmark)
#   ./run.sh test [ARGS]     run the test suite (ARGS go to pytest)
#   ./run.sh reproduce [ARGS]  run `python -m experiments.reproduce ARGS` (the whole study, N seeds)
#   ./run.sh benchmark_seeds [ARGS]  run `python -m experiments.benchmark_seeds ARGS`
#   ./run.sh bench [ARGS]    run `python -m experiments.bench ARGS` (CIFAR-10 speed bench)
#   ./run.sh fold_gpu_session DIR    fold a device session's output into reports/ and the README
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
    cd "$REPO"  # pytest.ini and tests/ are found from the repository root
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  reproduce | benchmark_seeds | bench | fold_gpu_session)
    module="$1"
    shift
    exec "$VENV/bin/python" -m "experiments.$module" "$@"
    ;;
  "")
    exec "$VENV/bin/python" -m experiments.main --flagfile=lstm_glove.flags
    ;;
  *)
    exec "$VENV/bin/python" -m experiments.main "$@"
    ;;
esac
