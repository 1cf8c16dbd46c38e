"""What only this repository's maintainers run, kept out of the installed package: the GPU
benchmark session (gpu_session.py, started by benchmarks/gpu_session.sh) and the fold of its
output into reports/, benchmarks/ and docs/gpu.md (fold_gpu_session.py). Run them from a
checkout's root: `python -m tools.gpu_session`, `python -m tools.fold_gpu_session DIR`."""
