"""Orbax checkpoints in a workdir: the latest N for resuming, the best one on dev.

Layout:  <workdir>/config.json      what the checkpoints were trained as (guarded)
         <workdir>/checkpoints/<step>  latest, keep N   (resume)
         <workdir>/best/<step>         best on dev, keep 1 (eval, predict, final test)
Each checkpoint holds the train state (pytree) and a JSON `meta` dict (epoch, history...).
Saves are synchronous and orbax commits them atomically (write to a temporary folder,
then rename), so a run killed at any moment leaves only whole checkpoints behind.

Why "best" is its own manager rather than orbax's `best_fn` preservation: a state stacks
several seeds, and each seed has its own best epoch, so the best checkpoint mixes replicas
of different epochs (simjax.loop assembles it with replicas.select). Orbax ranks whole
checkpoints by one metric and cannot keep a per-replica mixture.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from simjax import distributed
from simjax.errors import CheckpointWriteError, ConfigMismatchError, DamagedCheckpoints, WorkdirError
from simjax.run_records import write_json

CONFIG_FILE = "config.json"
_MISSING = object()
log = logging.getLogger("simjax")


class CheckpointStore:
  def __init__(self, workdir: str, keep: int = 3, *, read_only: bool = False):
    """`read_only` (eval, predict): never write, and leave a running training's
    unfinished checkpoints alone."""
    self.workdir = os.path.abspath(workdir)
    self._read_only = read_only
    self._latest = self._manager("checkpoints", keep, read_only)
    self._best = self._manager("best", 1, read_only)
    self._open = True

  def _manager(self, name: str, keep: int, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=False,
      cleanup_tmp_directories=not read_only,
      read_only=read_only,
      create=not read_only,
    )
    return ocp.CheckpointManager(
      os.path.join(self.workdir, name), options=options, item_names=("state", "meta")
    )

  # -- configuration guard ------------------------------------------------------------
  def guard_config(
    self, config: dict[str, Any], *, replace: bool = False, recorded: dict[str, Any] | None = None
  ) -> None:
    """Records `config` for a new workdir (or, with `replace`, one without checkpoints);
    refuses a workdir trained with another configuration. `recorded`: {flattened key: value}
    the run recorded elsewhere for keys its config.json lacks (written before they counted)."""
    path = os.path.join(self.workdir, CONFIG_FILE)
    if replace and self.latest_step() is None:
      write_json(path, config)
      return
    if not os.path.exists(path):
      if self.latest_step() is not None:
        raise WorkdirError(f"{self.workdir} holds checkpoints but no {CONFIG_FILE}", self.workdir)
      write_json(path, config)
      return
    with open(path) as f:
      saved = json.load(f)
    saved = {**(recorded or {}), **traverse_util.flatten_dict(saved, sep=".")}
    config = traverse_util.flatten_dict(json.loads(json.dumps(config)), sep=".")  # types as written
    differences = [
      f"{key}={_shown(saved, key)} there, {_shown(config, key)} now"
      for key in sorted(set(saved) | set(config))
      if saved.get(key, _MISSING) != config.get(key, _MISSING)
    ]
    if differences:
      raise ConfigMismatchError(self.workdir, differences)

  # -- save / restore -----------------------------------------------------------------
  def save(self, step: int, state: Any, meta: dict[str, Any], *, best_state: Any = None) -> None:
    """Saves `state` as the latest checkpoint and, if given, `best_state` as the best."""

    def args(tree):
      return ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))

    # `best` first, so a resumed run never lacks the best of its epochs. A run killed
    # between the two saves redoes that epoch and saves the same step again: replace it.
    saves = [(self._best, "best", best_state)] if best_state is not None else []
    for manager, folder, tree in saves + [(self._latest, "checkpoints", state)]:
      try:
        if step in manager.all_steps():
          manager.delete(step)
        manager.save(step, args=args(tree), force=True)
      except Exception as e:  # tensorstore reports a full disk as ValueError("OUT_OF_RANGE: ...")
        raise CheckpointWriteError(os.path.join(self.workdir, folder, str(step)), _write_failure(e)) from e

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.latest_step()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest usable checkpoint (state, meta); None if there is none at all."""
    return self._restore(self._latest, "checkpoints", abstract_state)

  def restore_best(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    return self._restore(self._best, "best", abstract_state)

  def _restore(self, manager: ocp.CheckpointManager, folder: str, abstract_state: Any):
    """The newest step that restores whole. A damaged or incomplete one (a truncated array
    file, missing metadata) is skipped with a warning naming it; when training, it is moved
    aside to <step>.damaged so the rerun's own save of that step cannot collide with it.
    Raises DamagedCheckpoints when steps exist but none restores."""
    damaged = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
          ),
        )
        state, meta = restored["state"], dict(restored["meta"])
      except Exception as e:  # orbax and tensorstore raise many types for damaged files
        path = os.path.join(self.workdir, folder, str(step))
        reason = f"{type(e).__name__}: {_first_line(e)}"
        damaged.append(f"{path} ({reason})")
        log.warning("checkpoint %s is damaged or incomplete (%s): trying the one before", path, reason)
        if not self._read_only:
          # Several processes find the same step damaged: process 0 moves it, all then reload.
          if distributed.is_primary():
            os.rename(path, f"{path}.damaged")
          distributed.barrier(f"simjax-damaged-{folder}-{step}")
          manager.reload()
        continue
      return state, meta
    if damaged:
      raise DamagedCheckpoints(self.workdir, folder, damaged)
    return None

  def close(self) -> None:
    """Idempotent: a second call does nothing."""
    if self._open:
      self._open = False
      self._latest.close()
      self._best.close()


def _shown(config: dict[str, Any], key: str) -> str:
  """A setting as the config guard names it. One a config leaves out is at its default: tasks
  leave out settings added later when at their defaults, and older workdirs lack them."""
  return repr(config[key]) if key in config else "its default"


def _first_line(error: BaseException, limit: int = 160) -> str:
  line = (str(error).strip().splitlines() or [""])[0]
  return f"{line[:limit]}{'...' if len(line) > limit else ''}"


def _write_failure(error: BaseException) -> str:
  """The operating system's reason (e.g. "No space left on device"), which tensorstore puts at
  the end of a long message; else the message's first line."""
  code = error.errno if isinstance(error, OSError) else None
  found = re.search(r"os_error_code='(\d+)'", str(error))
  code = int(found.group(1)) if found else code
  return f"{os.strerror(code)}, errno {code}" if code else _first_line(error)


def read_config(workdir: str) -> dict[str, Any]:
  """The config.json of a trained workdir (what eval and predict rebuild the model from)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(f"{path} not found: {workdir} is not the workdir of a trained model", workdir)
  with open(path) as f:
    return json.load(f)


def restore_for_inference(workdir: str, state: Any, which: str) -> Any:
  """The workdir's `which` ("best" / "latest") checkpoint, restored into the structure and
  device placement of `state` (built from the workdir's config.json), so a model trained
  on several devices is usable on one. Read-only: a running training is never disturbed."""
  store = CheckpointStore(workdir, read_only=True)
  restore = store.restore_best if which == "best" else store.restore_latest
  restored = restore(abstract_state(state))
  store.close()
  if restored is None:
    folder = "best" if which == "best" else "checkpoints"
    raise WorkdirError(f"no checkpoint in {os.path.join(workdir, folder)}: train there first", workdir)
  return restored[0]


def abstract_state(state: Any) -> Any:
  """`state`'s structure for a restore; each array keeps its sharding, so restored arrays land
  where the live ones are."""

  def abstract(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x

  return jax.tree_util.tree_map(abstract, state)
