#!/usr/bin/env bash
# simjax set-up and entry point.
#   ./run.sh                 create .venv, install requirements.txt, run the default experiment
#                            (GloVe LSTM on STS Benchmark)
#   ./run.sh test [ARGS]     run the test suite (ARGS go to pytest)
#   ./run.sh ARGS            run `python -m experiments.main ARGS`, e.g. --flagfile=rnn.flags
# Offline: when ../shared exists, its raw datasets are used (SIMJAX_MANUAL_DIR); otherwise
# TFDS downloads the official files on first use.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${SIMJAX_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.requirements.sha256"
wanted="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "run.sh: installing requirements.txt into $VENV (first run only; about a minute)..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -qq --upgrade pip
  "$VENV/bin/python" -m pip install -qq -r requirements.txt
  echo "$wanted" > "$stamp"
fi

if [ -z "${SIMJAX_MANUAL_DIR:-}" ] && [ -d ../shared/data ]; then
  export SIMJAX_MANUAL_DIR="$(cd ../shared/data && pwd)"
fi
export PYTHONUNBUFFERED=1

case "${1:-}" in
  test)
    shift
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  "")
    exec "$VENV/bin/python" -m experiments.main --flagfile=lstm_glove.flags
    ;;
  *)
    exec "$VENV/bin/python" -m experiments.main "$@"
    ;;
esac
