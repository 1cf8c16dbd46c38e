"""The errors simjax raises on purpose, each carrying the facts a caller needs.

The library states what is wrong in its own terms; `experiments/` maps each type to the
flags a user would change (the library never names a flag). Every class is also a
built-in error type (ValueError, OSError, MemoryError, RuntimeError), so callers that
catch those keep working.
"""

from __future__ import annotations


def path_problem(path: str, error: OSError) -> str:
  """Why `path` could not be read, in words rather than an errno (e.g. "x.tsv does not exist")."""
  if isinstance(error, FileNotFoundError):
    return f"{path} does not exist"
  if isinstance(error, IsADirectoryError):
    return f"{path} is a directory"
  return f"cannot read {path} ({error.strerror or error})"


class SimjaxError(Exception):
  """Base of every error simjax raises on purpose (as opposed to a bug).

  `settings` names the configuration fields (dataclass field names, e.g. "data_dir") a
  user would change to fix it; a front end turns them into its own option names.
  """

  settings: tuple[str, ...] = ()


class DataError(SimjaxError, ValueError):
  """Missing or unusable data (a dataset not prepared, a bad split, an unreadable file)."""

  def __init__(self, message: str, settings: tuple[str, ...] = ()):
    self.settings = settings
    super().__init__(message)


class ConfigError(SimjaxError, ValueError):
  """Settings that cannot work together (e.g. a batch larger than the training split)."""

  def __init__(self, message: str, settings: tuple[str, ...] = ()):
    self.settings = settings
    super().__init__(message)


class BatchSizeError(ConfigError):
  """The batch size does not split evenly over the devices."""

  def __init__(self, batch_size: int, devices: int, processes: int = 1):
    self.batch_size, self.devices = batch_size, devices
    self.suggestion = max(devices, batch_size // devices * devices)
    where = f"{devices} devices" + (f" ({processes} processes together)" if processes > 1 else "")
    super().__init__(
      f"batch size {batch_size} does not split evenly over {where}: "
      f"use a multiple of {devices} (e.g. {self.suggestion})",
      settings=("batch_size",),
    )


class WorkdirError(SimjaxError, ValueError):
  """The workdir cannot be used as asked: it belongs to another configuration or kind of
  run, or lacks the files the request needs. `workdir` names it."""

  settings = ("workdir",)

  def __init__(self, message: str, workdir: str):
    self.workdir = workdir
    super().__init__(message)


class ConfigMismatchError(WorkdirError):
  """The workdir holds checkpoints of a different configuration; `differences` lists them."""

  def __init__(self, workdir: str, differences: list[str]):
    self.differences = differences
    super().__init__(
      f"workdir {workdir} belongs to a different configuration ({'; '.join(differences)})", workdir
    )


class DataMismatchError(WorkdirError):
  """The data a resumed or rerun run would read differs from what it trained on (another
  split, other rows, other files by checksum, another leakage check); `differences` lists them."""

  def __init__(self, workdir: str, differences: list[str]):
    self.differences = differences
    super().__init__(
      f"the data differs from what the run in {workdir} trained on ({'; '.join(differences)})", workdir
    )


class FinishedRunError(WorkdirError):
  """A finished run (its results.json) asked to rerun with settings that would train nothing
  more and only rewrite its record; `differences` lists them. Evaluating it another way
  writes a record of its own (eval); training it differently needs a new workdir."""

  settings = ("workdir", "epochs", "early_stop_patience")

  def __init__(self, workdir: str, finished: str, differences: list[str]):
    self.differences = differences
    super().__init__(
      f"workdir {workdir} holds a finished run ({finished}); {'; '.join(differences)} would train "
      "nothing more and only rewrite its results",
      workdir,
    )


class WorkdirLocked(WorkdirError):
  """Another process holds the workdir's lock (it trains or evaluates there); `holder` is
  what its lock file records: pid, host, started, command."""

  def __init__(self, workdir: str, lock_path: str, holder: dict, *, same_host: bool):
    self.lock_path, self.holder = lock_path, holder
    who = (
      f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"
      if holder
      else "a process that is writing its lock file"
    )
    gone = (
      ""
      if same_host
      else f"; that host's process cannot be checked from here: delete {lock_path} once that run is over"
    )
    super().__init__(f"workdir {workdir} is in use by {who}{gone}", workdir)


class DamagedCheckpoints(WorkdirError):
  """Every checkpoint in a workdir's folder ("checkpoints" or "best") failed to restore;
  `damaged` lists each with its reason. Nothing is retrained over them."""

  def __init__(self, workdir: str, folder: str, damaged: list[str]):
    self.folder, self.damaged = folder, damaged
    super().__init__(
      f"no usable checkpoint in {workdir}/{folder}: {'; '.join(damaged)}; restore the workdir from a "
      "copy, or train again in a new workdir",
      workdir,
    )


class CheckpointWriteError(SimjaxError, OSError):
  """A checkpoint could not be written (a full disk, a file size limit, lost permissions);
  the checkpoints saved before it are whole and kept."""

  def __init__(self, path: str, detail: str):
    self.path, self.detail = path, detail
    super().__init__(
      f"saving checkpoint {path} failed ({detail}); the checkpoints saved before it are kept: free "
      "space (or fix the folder's permissions) and rerun the same command to resume"
    )


class TrainingDiverged(SimjaxError, RuntimeError):
  """The loss or the parameters became NaN or infinite. The last good checkpoint is kept."""

  settings = ("learning_rate", "grad_clip_norm", "workdir")

  def __init__(self, what: str, *, epoch: int, seed: int | None, kept_step: int | None):
    self.epoch, self.seed, self.kept_step = epoch, seed, kept_step
    kept = (
      f"the last good checkpoint (step {kept_step}) is kept"
      if kept_step is not None
      else "no checkpoint was written yet"
    )
    super().__init__(f"{what}; {kept}")


class OutOfDeviceMemory(SimjaxError, MemoryError):
  """Stacked replicas (seeds) did not fit in device memory: train them one after another
  (same results to float tolerance) or fewer of them."""

  settings = ("sequential_seeds", "num_seeds")

  def __init__(self, num_seeds: int, detail: str):
    self.num_seeds, self.detail = num_seeds, detail
    super().__init__(f"{num_seeds} stacked replicas do not fit in device memory ({detail})")


class ProgramTooLarge(SimjaxError, MemoryError):
  """A compiled program needs more memory per device than the device has, at the run's batch
  size: checked after compiling, before any training. `fitting_batch_size`: the largest batch
  size (halving) whose program fits, None if none does."""

  settings = ("batch_size",)

  def __init__(
    self, program: str, batch_size: int, need: int | None, limit: int, fitting_batch_size: int | None
  ):
    self.program, self.batch_size, self.fitting_batch_size = program, batch_size, fitting_batch_size
    needs = f"needs {need / 2**30:.1f} GiB per device" if need else "does not fit (the compiler says so)"
    fits = (
      f"batch size {fitting_batch_size} fits"
      if fitting_batch_size
      else "no batch size down to one per device fits"
    )
    super().__init__(
      f"the {program} program at batch size {batch_size} {needs}, one device has "
      f"{limit / 2**30:.1f} GiB: {fits}"
    )


class Preempted(SimjaxError, RuntimeError):
  """Training stopped on request (simjax.loop.StopRequest: e.g. SIGTERM from a scheduler)
  after saving a checkpoint at `saved_step`; rerunning the same run resumes there and ends
  with the numbers of an uninterrupted run. `steps_done` counts the steps of epoch `epoch`
  done when it stopped in the middle of it (None: it stopped between epochs)."""

  def __init__(self, reason: str, *, epoch: int, steps_done: int | None, saved_step: int | None):
    self.reason, self.epoch, self.steps_done, self.saved_step = reason, epoch, steps_done, saved_step
    saved = f"checkpoint step {saved_step} holds it" if saved_step is not None else "no checkpoint yet"
    where = (
      f"in epoch {epoch} after {steps_done} of its steps"
      if steps_done is not None
      else f"after epoch {epoch}"
      if epoch
      else "before the first epoch"
    )
    super().__init__(f"stopped ({reason}) {where}: {saved}")


class DistributedError(SimjaxError, RuntimeError):
  """The processes of a multi-process run cannot join (a coordinator that cannot be reached,
  inconsistent process ids)."""

  settings = ("coordinator_address", "num_processes", "process_id")
