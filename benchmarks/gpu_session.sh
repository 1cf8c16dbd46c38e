#!/usr/bin/env bash
# The GPU numbers still missing (issues 3 and 4), as one script for one lent device session.
# NOT RUN YET: no session so far had a device. Expect to fix small things on its first use.
#
# Prepare here, at no device time (from the repo root):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl tensorflow-datasets==4.9.10 array_record==0.8.6 dm-tree immutabledict simple_parsing \
#     tensorflow-metadata toml termcolor docstring-parser etils tensorboardX
#   python3 -m pip download --no-deps --no-binary=:all: -d .whl promise   # an sdist
#   mkdir -p .data/tfds .data/raw && cp -r ../shared/tensorflow_datasets/cifar10 .data/tfds/ \
#     && cp -r ../shared/data/stsbenchmark .data/raw/
# Then: the device tool with carry [".whl", ".data/tfds", ".data/raw"] and command
#   bash benchmarks/gpu_session.sh
# Everything it measures lands in $OUT (results.json files, logs, nvidia-smi).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/promise-*.tar.gz \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
out="${OUT:-gpu_out}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt"
cifar="--data_dir=$PWD/.data/tfds --cache_dir=/tmp/simjax_cache --dtype=bfloat16"

# 1. cnn_resnet, one seed: seconds per epoch, time to 90% (JPEG stand-in), final accuracy.
timeout 240 python3 -m experiments.main --flagfile=cnn_resnet.flags $cifar --workdir="$out/cnn_resnet" \
  2>&1 | tail -45 | tee "$out/cnn_resnet.log"

# 2. 8 stacked Siamese LSTM seeds vs one vs 8 sequential (issue 4: <= 1.5x one seed).
export TFDS_DATA_DIR=/tmp/tfds SIMJAX_MANUAL_DIR="$PWD/.data/raw"
timeout 180 python3 -m experiments.benchmark_seeds --out="$out" 2>&1 | tail -12 | tee "$out/seeds.log"

# 3. What --deterministic costs: the same ResNet, 3 epochs, with and without.
for det in nodeterministic deterministic; do
  timeout 90 python3 -m experiments.main --flagfile=cnn_resnet.flags $cifar --epochs=3 --"$det" \
    --workdir="$out/resnet_3_$det" 2>&1 | tail -3 | tee "$out/resnet_3_$det.log"
done
