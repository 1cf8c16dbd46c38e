"""notebooks/colab.ipynb: in step with its text twin, and run end to end in its quick mode on
CPU with 8 simulated devices (as a Kaggle TPU v5e-8 shows 8), interrupted once and resumed."""

import asyncio
import json
import os
import pathlib
import threading
import time

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab.ipynb"
TEXT_TWIN = REPO / "notebooks" / "colab.py"


def test_the_notebook_and_its_text_twin_hold_the_same_cells():
  notebook, text = jupytext.read(NOTEBOOK), jupytext.read(TEXT_TWIN)
  cells = lambda nb: [(cell.cell_type, cell.source) for cell in nb.cells]
  assert cells(notebook) == cells(text), "run `jupytext --sync notebooks/colab.ipynb`"
  assert not any(cell.get("outputs") for cell in notebook.cells), "commit the notebook without outputs"


@pytest.fixture
def notebook_env(prepared, manual_dir, cifar_data_dir, tmp_path, monkeypatch):
  """The kernel's environment (it inherits this process's): quick mode, 8 CPU devices, the
  offline data in one TFDS folder, workdirs under tmp_path."""
  data_dir = tmp_path / "tensorflow_datasets"
  data_dir.mkdir()
  for source in (pathlib.Path(cifar_data_dir) / "cifar10", *pathlib.Path(prepared("stsb")).glob("sts_*")):
    (data_dir / source.name).symlink_to(source)
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
  for key, value in {
    "XLA_FLAGS": xla_flags,
    "JAX_PLATFORMS": "cpu",
    "SIMJAX_QUICK": "1",
    "SIMJAX_RUNTIME": "auto",
    "SIMJAX_WORK_ROOT": str(tmp_path / "runs"),
    "SIMJAX_MOUNT_DRIVE": "0",
    "TFDS_DATA_DIR": str(data_dir),
    "SIMJAX_MANUAL_DIR": str(manual_dir),
    "PYTHONPATH": str(REPO),  # simjax is "installed": the notebook skips pip
  }.items():
    monkeypatch.setenv(key, value)
  return tmp_path / "runs"


def _client(notebook, cwd) -> NotebookClient:
  return NotebookClient(
    notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
  )


def _text(cell) -> str:
  return "".join(
    output.get("text", "") + "".join(output.get("traceback", [])) + output.get("evalue", "")
    for output in cell.get("outputs", [])
  )


def _cell(notebook, marker: str):
  return next(cell for cell in notebook.cells if cell.cell_type == "code" and marker in cell.source)


def test_the_notebook_trains_both_tasks_on_8_devices_and_resumes_after_an_interrupt(notebook_env, tmp_path):
  cifar_workdir = notebook_env / "cnn_resnet_quick"

  # First execution: interrupted (as the stop button does) once CIFAR-10's first epoch is saved.
  first = nbformat.read(NOTEBOOK, as_version=4)
  client = _client(first, tmp_path)
  interrupted = threading.Event()

  def interrupt_after_the_first_checkpoint():
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not interrupted.is_set():
      if (cifar_workdir / "metrics.jsonl").exists() and (cifar_workdir / "metrics.jsonl").read_text():
        asyncio.run(client.km.interrupt_kernel())  # an async kernel manager: a coroutine
        interrupted.set()
      time.sleep(0.02)

  watcher = threading.Thread(target=interrupt_after_the_first_checkpoint, daemon=True)
  watcher.start()
  with pytest.raises(CellExecutionError) as stopped:
    client.execute()
  interrupted.set()
  watcher.join()
  assert "rerun the same command to resume" in str(stopped.value)
  assert "8 local device(s)" in _text(_cell(first, "import jax"))
  assert len((cifar_workdir / "metrics.jsonl").read_text().splitlines()) in (1, 2)  # stopped in epoch 2 or 3
  assert not (cifar_workdir / "results.json").exists()

  # Second execution, as on a new runtime: every cell again; CIFAR-10 resumes where it stopped. The
  # lock a lost runtime (another machine) left on the shared drive does not stand in the way.
  (cifar_workdir / ".lock").write_text(
    json.dumps({"pid": 4242, "host": "lost-runtime", "started": "2026-01-01T00:00:00", "command": "?"})
  )
  second = nbformat.read(NOTEBOOK, as_version=4)
  _client(second, tmp_path).execute()
  history = [json.loads(line) for line in (cifar_workdir / "metrics.jsonl").read_text().splitlines()]
  assert [row["epoch"] for row in history] == [1, 2, 3]
  results = json.loads((cifar_workdir / "results.json").read_text())
  assert results["devices"] == 8 and results["epochs"] == 3
  assert "removed the workdir's lock of a previous runtime: host lost-runtime" in _text(
    _cell(second, "--flagfile=cnn_resnet.flags")
  )
  shown = _text(_cell(second, "cifar['test']['accuracy']"))
  assert f"test accuracy {results['test']['accuracy']:.2%} on CIFAR-10 (JPEG stand-in)" in shown

  figures = [
    output
    for cell in second.cells
    for output in cell.get("outputs", [])
    if "image/png" in output.get("data", {})
  ]
  assert len(figures) == 3  # comparison, per-class accuracy, sentence learning curves
  for name in ("comparison.png", "per_class_accuracy.png", "learning_curves.png"):
    assert (notebook_env / "figures" / name).stat().st_size > 0

  sentences = json.loads((notebook_env / "lstm_glove_stsb_quick" / "results.json").read_text())
  assert -1 <= sentences["test"]["pearson"] <= 1
  scored = _text(_cell(second, "simjax_scores(stsb_workdir")).strip().splitlines()[-3:]
  assert [line.split("  ", 1)[1] for line in scored] == [
    "A man is playing a guitar. | A man plays the guitar.",
    "A woman is slicing an onion. | A woman is cutting an onion.",
    "A dog runs through the park. | The stock market fell sharply today.",
  ]
  assert all(0 <= float(line.split()[0]) <= 5 for line in scored)


def test_a_notebook_set_to_a_runtime_it_does_not_have_says_which_to_pick(notebook_env, tmp_path, monkeypatch):
  monkeypatch.setenv("SIMJAX_RUNTIME", "tpu")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  with pytest.raises(CellExecutionError) as refused:
    _client(notebook, tmp_path).execute()
  assert (
    "this notebook is set to run on TPU (RUNTIME), but this runtime has no accelerator: pick "
    "Runtime > Change runtime type > TPU (v5e-1 or v6e-1)" in str(refused.value)
  )
  assert not notebook_env.exists()  # stopped before anything was written
