#!/usr/bin/env bash
# reproduce --jobs on this machine: the same two sentence experiments (lstm on STS-B and on SICK,
# 5 seeds, 3 epochs) run one after the other (--jobs=1), then both at once (--jobs=2), REPS
# times alternately; writes the wall seconds, their medians and the ratio to OUT (JSON).
#   bash benchmarks/reproduce_jobs.sh [OUT] [REPS]      (default benchmarks/reproduce_jobs_cpu.json, 1)
# Run it on an otherwise idle machine: other work on the CPU changes both timings.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/reproduce_jobs_cpu.json}"
reps="${2:-1}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
times="$scratch/times.tsv"
for rep in $(seq "$reps"); do
  for jobs in 1 2; do
    start=$(date +%s%N)
    ./run.sh reproduce --reports_dir="$scratch" --name="jobs${jobs}_${rep}" --only=lstm_stsb,lstm_sick \
      --similarity_flags=--epochs=3 --jobs="$jobs" > "$scratch/jobs${jobs}_${rep}.out"
    end=$(date +%s%N)
    echo -e "$jobs\t$(( (end - start) / 1000000 ))" | tee -a "$times"  # milliseconds
  done
done
.venv/bin/python - "$times" "$out" "$reps" <<'PY'
import json, os, platform, statistics, subprocess, sys
times, out, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
seconds = {1: [], 2: []}
for line in open(times):
  jobs, wall = line.split()
  seconds[int(jobs)].append(int(wall) / 1000)
median = {jobs: statistics.median(s) for jobs, s in seconds.items()}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
result = {
  "command": f"bash benchmarks/reproduce_jobs.sh {out} {reps}",
  "what": "./run.sh reproduce --only=lstm_stsb,lstm_sick --similarity_flags=--epochs=3 (5 seeds), --jobs=1 vs --jobs=2",
  "machine": {"cpu": cpu, "cpu_count": os.cpu_count()},
  "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
  "wall_seconds": {f"jobs={j}": s for j, s in seconds.items()},
  "median_wall_seconds": {f"jobs={j}": round(m, 1) for j, m in median.items()},
  "speedup_jobs2_over_jobs1": round(median[1] / median[2], 2),
}
with open(out, "w") as f:
  json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
PY
