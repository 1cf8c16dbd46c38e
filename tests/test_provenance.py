"""What a run records about the code it ran: a checkout's commit, an installed copy's version only."""

import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from simjax import run_records

# The package these tests import, and the folder above it (the checkout when run from one).
PACKAGE = os.path.dirname(os.path.abspath(run_records.__file__))
CHECKOUT = os.path.dirname(PACKAGE)
NO_COMMIT = {"commit": None, "dirty": None}


def _git(cwd, *args):
  return subprocess.run(
    ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
  ).stdout.strip()


def _repository(root):
  """Someone else's project: a git repository with one commit that ignores .venv/; its HEAD."""
  root.mkdir()
  _git(root, "init", "-q")
  (root / ".gitignore").write_text(".venv/\n")
  (root / "train.py").write_text("print('their code')\n")
  _git(root, "add", ".")
  _git(
    root,
    "-c",
    "user.name=t",
    "-c",
    "user.email=t@example.com",
    "-c",
    "commit.gpgsign=false",
    "commit",
    "-q",
    "-m",
    "theirs",
  )
  return _git(root, "rev-parse", "HEAD")


def _copy_package(site):
  shutil.copytree(PACKAGE, site / "simjax", ignore=shutil.ignore_patterns("__pycache__"))
  return site / "simjax"


@pytest.mark.parametrize(
  "where", [".venv/lib/python3/site-packages", "vendored"], ids=["ignored", "untracked"]
)
def test_a_copy_inside_another_repository_records_no_commit(tmp_path, where):
  theirs = _repository(tmp_path / "project")
  copy = _copy_package(tmp_path / "project" / where)
  assert run_records.git_state(str(copy)) == NO_COMMIT
  assert run_records.git_state(str(copy / "run_records.py")) == NO_COMMIT
  # That repository's own files are its code: they get its commit.
  assert run_records.git_state(str(tmp_path / "project" / "train.py")) == {"commit": theirs, "dirty": False}
  assert run_records.git_state(str(tmp_path / "project")) == {"commit": theirs, "dirty": False}
  assert run_records.git_state(str(tmp_path)) == NO_COMMIT  # no repository at all


def test_an_installed_copy_records_its_version_and_no_commit(tmp_path):
  """pip install . into a .venv/ inside another repository, then a run from that project."""
  project = tmp_path / "project"
  _repository(project)
  site = project / ".venv" / "lib" / "python3" / "site-packages"
  _copy_package(site)
  # What pip leaves beside the package; a version no checkout has, so it can only come from here.
  (site / "simjax-9.8.7.dist-info").mkdir()
  (site / "simjax-9.8.7.dist-info" / "METADATA").write_text(
    "Metadata-Version: 2.1\nName: simjax\nVersion: 9.8.7\n"
  )
  code = (
    "import json; from simjax import run_records as r; "
    "print(json.dumps([r.__file__, r.git_state(), r.versions()['simjax']]))"
  )
  done = subprocess.run(
    [sys.executable, "-c", code],
    check=False,
    cwd=project,
    env={**os.environ, "PYTHONPATH": str(site)},  # that copy, not this checkout
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  imported, git, version = json.loads(done.stdout.splitlines()[-1])
  assert imported == str(site / "simjax" / "run_records.py")
  assert git == NO_COMMIT and version == "9.8.7"


def test_the_checkout_records_its_commit_and_version():
  try:
    top = _git(CHECKOUT, "rev-parse", "--show-toplevel")
  except (OSError, subprocess.SubprocessError):
    top = None
  if top is None or os.path.realpath(top) != os.path.realpath(CHECKOUT):
    pytest.skip("simjax is not imported from a git checkout")
  state = run_records.git_state()
  assert state["commit"] == _git(CHECKOUT, "rev-parse", "HEAD") and isinstance(state["dirty"], bool)
  with open(os.path.join(CHECKOUT, "pyproject.toml"), "rb") as f:
    assert run_records.versions()["simjax"] == tomllib.load(f)["project"]["version"]
