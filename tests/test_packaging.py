"""pyproject.toml (what `pip install .` installs) stays in step with requirements.txt (the
pinned set the suite runs on), and ships everything the command lines read at run time."""

import contextlib
import fnmatch
import importlib
import importlib.metadata
import io
import pathlib
import sys
import tomllib
import zipfile

import setuptools.build_meta

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements_txt() -> dict[str, Requirement]:
  lines = (line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines())
  return {canonicalize_name(r.name): r for r in map(Requirement, filter(None, lines))}


def _by_name(requirements: list[str]) -> dict[str, Requirement]:
  return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


def test_the_package_depends_on_what_requirements_txt_pins_and_admits_the_pinned_versions():
  pinned = _requirements_txt()
  installed = _by_name(PROJECT["project"]["dependencies"])
  tests = _by_name(PROJECT["project"]["optional-dependencies"]["test"])
  assert set(installed) | set(tests) == set(pinned), "a package is in one of the two files only"
  for name, requirement in installed.items():
    for spec in pinned[name].specifier:  # "==x.y.z" pins: the package's range must admit them
      assert requirement.specifier.contains(spec.version), f"{name}: {requirement} excludes {pinned[name]}"


def test_the_accelerator_extras_install_the_same_jax_with_its_accelerator_build():
  jax = _by_name(PROJECT["project"]["dependencies"])["jax"]
  for extra, build in (("tpu", "tpu"), ("cuda12", "cuda12")):
    (requirement,) = map(Requirement, PROJECT["project"]["optional-dependencies"][extra])
    assert (canonicalize_name(requirement.name), requirement.extras) == ("jax", {build})
    assert requirement.specifier == jax.specifier


def test_the_deviceless_extra_pins_what_run_sh_installs_for_the_tests():
  lines = (
    line.split("#")[0].strip() for line in (REPO / "requirements-deviceless.txt").read_text().splitlines()
  )
  pinned = {canonicalize_name(r.name): r for r in map(Requirement, filter(None, lines))}
  extra = _by_name(PROJECT["project"]["optional-dependencies"]["deviceless"])
  assert set(extra) == set(pinned)
  for name, requirement in extra.items():
    (spec,) = pinned[name].specifier
    assert requirement.specifier.contains(spec.version), f"{name}: {requirement} excludes {pinned[name]}"
  # The versions JAX's own extras pin for the installed jax: jax[tpu]'s libtpu, jax[cuda12]'s plugin.
  for extra, name in (("tpu", "libtpu"), ("cuda12", "jax-cuda12-plugin")):
    (wanted,) = [
      r
      for r in map(Requirement, importlib.metadata.requires("jax"))
      if canonicalize_name(r.name) == name and r.marker and r.marker.evaluate({"extra": extra})
    ]
    assert wanted.specifier.contains(next(iter(pinned[name].specifier)).version), (
      f"{name}: jax wants {wanted}"
    )


def test_the_package_ships_the_modules_and_files_the_command_lines_need():
  setuptools = PROJECT["tool"]["setuptools"]
  packages = setuptools["packages"]["find"]["include"]
  for package in ("simjax", "simjax.tasks.cifar10", "experiments"):
    assert any(fnmatch.fnmatch(package, pattern) for pattern in packages), package
  data = setuptools["package-data"]["experiments"]
  needed = [p.name for p in (REPO / "experiments").iterdir() if p.suffix in (".flags", ".json")]
  assert "cnn_resnet.flags" in needed and "study.json" in needed
  for name in needed:
    assert any(fnmatch.fnmatch(name, pattern) for pattern in data), f"{name} would be left out"
  module, function = PROJECT["project"]["scripts"]["simjax"].split(":")
  assert module == "experiments.main" and callable(getattr(importlib.import_module(module), function))


def test_this_python_is_a_supported_one():
  version = ".".join(map(str, sys.version_info[:3]))
  assert SpecifierSet(PROJECT["project"]["requires-python"]).contains(version)


def test_the_wheel_holds_the_library_the_command_lines_and_their_files(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    name = setuptools.build_meta.build_wheel(str(tmp_path))
  files = set(zipfile.ZipFile(tmp_path / name).namelist())
  needed = {
    "simjax/run.py",
    "simjax/distributed.py",
    "simjax/tasks/cifar10/models.py",
    "simjax/tasks/similarity/task.py",
    "experiments/main.py",
    "experiments/reproduce.py",
    "experiments/study.json",
  } | {f"experiments/{p.name}" for p in (REPO / "experiments").glob("*.flags")}
  assert needed <= files, sorted(needed - files)
  # What only the repository's maintainers run (tools/: the GPU benchmark session, its fold) stays out.
  assert not any(f.startswith(("tests/", "notebooks/", "reports/", "tools/")) for f in files)
  entry_points = next(f for f in files if f.endswith(".dist-info/entry_points.txt"))
  assert "simjax = experiments.main:cli" in zipfile.ZipFile(tmp_path / name).read(entry_points).decode()
