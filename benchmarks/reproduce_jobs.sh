#!/usr/bin/env bash
# reproduce --jobs on this machine: the same two sentence experiments (lstm on STS-B and on
# SICK, 5 seeds, EPOCHS epochs, default 12 as in their flagfile) run one after the other
# (--jobs=1), both at once each on its own half of the cores (--jobs=2, the default
# --split_cores), and both at once on every core (--jobs=2 --nosplit_cores), REPS times in turn;
# writes the wall seconds, their medians and the ratios to OUT (JSON).
#   bash benchmarks/reproduce_jobs.sh [OUT] [REPS] [EPOCHS]   (default benchmarks/reproduce_jobs_cpu.json 1 12)
# Run it on an otherwise idle machine: other work on the CPU changes both timings.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/reproduce_jobs_cpu.json}"
reps="${2:-1}"
epochs="${3:-12}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
times="$scratch/times.tsv"
for rep in $(seq "$reps"); do
  for mode in jobs=1 jobs=2 jobs=2,nosplit_cores; do
    extra=()
    [[ "$mode" == *nosplit_cores ]] && extra=(--nosplit_cores)
    start=$(date +%s%N)
    ./run.sh reproduce --reports_dir="$scratch" --name="${mode/,/_}_${rep}" --only=lstm_stsb,lstm_sick \
      --similarity_flags=--epochs="$epochs" --"${mode%%,*}" ${extra[@]+"${extra[@]}"} > "$scratch/${mode/,/_}_${rep}.out"
    end=$(date +%s%N)
    echo -e "$mode\t$(( (end - start) / 1000000 ))" | tee -a "$times"  # milliseconds
  done
done
.venv/bin/python - "$times" "$out" "$reps" "$epochs" <<'PY'
import json, os, platform, statistics, subprocess, sys
times, out, reps, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
seconds = {}
for line in open(times):
  mode, wall = line.split()
  seconds.setdefault(mode, []).append(int(wall) / 1000)
median = {mode: statistics.median(s) for mode, s in seconds.items()}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
result = {
  "command": f"bash benchmarks/reproduce_jobs.sh {out} {reps} {epochs}",
  "what": f"./run.sh reproduce --only=lstm_stsb,lstm_sick --similarity_flags=--epochs={epochs} (5 seeds): --jobs=1, "
  "--jobs=2 (each run on its own half of the cores), --jobs=2 --nosplit_cores (both on every core)",
  "machine": {"cpu": cpu, "cpu_count": os.cpu_count()},
  "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
  "dirty": bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()),
  "wall_seconds": seconds,
  "median_wall_seconds": {mode: round(m, 1) for mode, m in median.items()},
  "speedup_over_jobs1": {mode: round(median["jobs=1"] / m, 2) for mode, m in median.items() if mode != "jobs=1"},
}
with open(out, "w") as f:
  json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
PY
