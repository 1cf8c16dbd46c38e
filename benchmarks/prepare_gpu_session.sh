#!/usr/bin/env bash
# Builds what benchmarks/gpu_session.sh needs on a GPU machine without a package registry, in
# folders git ignores, and prints their size against a 64 MiB upload limit:
#   .whl/        wheels for the device's Python 3.12 that its image lacks (TFDS and its
#                dependencies, tensorboardX); jax, flax, optax, orbax, numpy... are there already
#   .data/tfds/  the prepared TFDS cifar10 (array_record)
#   .data/raw/   the raw STS Benchmark files (the sentence builder prepares them on the device)
# Then copy the repository with .whl/ and .data/ to the GPU machine and run bash benchmarks/gpu_session.sh
#
#   bash benchmarks/prepare_gpu_session.sh          # data from ../shared, or set the variables:
#   CIFAR_DIR=path/to/tensorflow_datasets/cifar10 STSB_DIR=path/to/stsbenchmark bash benchmarks/prepare_gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CIFAR_DIR="${CIFAR_DIR:-../shared/tensorflow_datasets/cifar10}"
STSB_DIR="${STSB_DIR:-../shared/data/stsbenchmark}"
PIP="${PIP:-python3 -m pip}"
LIMIT_MIB=64

for needed in "$CIFAR_DIR" "$STSB_DIR"; do
  if [ ! -d "$needed" ]; then
    echo "error: $needed not found: set CIFAR_DIR (a TFDS cifar10 folder) and STSB_DIR (the raw STS-B files)" >&2
    exit 1
  fi
done

# Wheels: the GPU machine has no package registry, so everything missing is copied. Pure-Python
# wheels and cp312 manylinux builds; one version of each (two stop the install there). The
# versions are the ones requirements.txt resolves to here (tested together): protobuf and
# etils too, which the device has in versions unknown here, since TFDS's generated protos
# need a recent protobuf runtime.
rm -rf .whl && mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl tensorflow-datasets==4.9.10 array_record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1 \
  simple_parsing==0.1.9 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 protobuf==7.36.2 \
  etils==1.15.0 toml==0.10.2 termcolor==3.3.0 docstring-parser==0.18.0 tensorboardX==2.6.5
$PIP download -q --no-deps --no-binary=:all: -d .whl promise==2.3  # sdist only; builds without network

rm -rf .data/tfds .data/raw && mkdir -p .data/tfds .data/raw
cp -r "$CIFAR_DIR" .data/tfds/cifar10
cp -r "$STSB_DIR" .data/raw/stsbenchmark

# What is copied: the working tree git does not ignore, plus these folders.
tree_bytes=$( (git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null || true) | awk '{s+=$1} END {print s+0}')
copied_bytes=$(du -sb .whl .data | awk '{s+=$1} END {print s+0}')
total=$((tree_bytes + copied_bytes))
printf '%-12s %7.1f MiB\n' "working tree" "$(echo "$tree_bytes / 1048576" | bc -l)" \
  ".whl" "$(du -sb .whl | awk '{print $1 / 1048576}')" \
  ".data" "$(du -sb .data | awk '{print $1 / 1048576}')"
printf 'total        %7.1f MiB of %d MiB\n' "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "error: over the ${LIMIT_MIB} MiB upload limit: copy less (e.g. drop .data/raw and the lstm_seeds step)" >&2
  exit 1
fi
echo "ready: copy the repository with .whl/ and .data/ to the GPU machine and run bash benchmarks/gpu_session.sh"
