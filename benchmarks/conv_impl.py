r"""Images per second of the CIFAR-10 CNNs with each convolution form (--conv_impl=xla: XLA's
convolution; matmul: one matmul over shifted copies of the input), through the real command
line: `python -m experiments.main --flagfile=F --conv_impl=C` on a slice of the train split,
results.json's `images_per_second` (training only: the programs compile ahead of time). The
forms alternate, each flagfile and form runs REPEATS times, the medians and the ratio go to OUT.

  python benchmarks/conv_impl.py [--out=benchmarks/conv_impl_cpu.json] [--repeats=3]

Run it on an otherwise idle machine; the data comes from TFDS_DATA_DIR as for any run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from simjax import run_records  # noqa: E402

FLAGFILES = ("cnn_resnet.flags", "cnn_fc.flags", "cnn_gap.flags")
# 8 steps of cnn_resnet's batch of 128 per epoch, 2 epochs; evaluation kept small (not timed).
SLICE = ("--train_split=train[:1024]", "--eval_split=test[:256]", "--epochs=2", "--tta=none")


def images_per_second(flagfile: str, conv_impl: str) -> float:
  with tempfile.TemporaryDirectory() as workdir:
    command = [
      sys.executable, "-m", "experiments.main", f"--flagfile={flagfile}", f"--conv_impl={conv_impl}",
      *SLICE, f"--workdir={workdir}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
      sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
      return json.load(f)["images_per_second"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "conv_impl_cpu.json"))
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  if os.path.exists(args.out):  # a record is never rewritten: each run keeps its own file
    sys.exit(f"error: {args.out} exists (a finished benchmark's record): pass another --out")
  measured = {}
  for flagfile in FLAGFILES:
    runs = {"xla": [], "matmul": []}
    for _ in range(args.repeats):
      for conv_impl in runs:  # alternating: a slow spell of the machine hits both forms
        runs[conv_impl].append(images_per_second(flagfile, conv_impl))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    measured[flagfile] = {
      "images_per_second": runs,
      "median": medians,
      "matmul_over_xla": medians["matmul"] / medians["xla"],
    }
    print(f"{flagfile}: xla {medians['xla']:.1f}, matmul {medians['matmul']:.1f} images/s", flush=True)
  record = {
    **run_records.provenance("python benchmarks/conv_impl.py " + " ".join(sys.argv[1:])),
    "flags": list(SLICE),
    "repeats": args.repeats,
    "results": measured,
    "cpu_flags": run_records.cpu_flags(),
  }
  run_records.write_json(args.out, record)
  print(f"written: {args.out}")


if __name__ == "__main__":
  main()
