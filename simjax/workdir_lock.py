"""An exclusive lock on a workdir, held by every process that writes into it.

    with workdir_lock.hold(workdir):
      ...  # train, or evaluate and write eval.json

`<workdir>/.lock` records the holder: pid, host, start time and command. It is created with
O_CREAT | O_EXCL, so of two processes starting at once exactly one gets it; the other raises
WorkdirLocked naming the holder, before it reads or writes anything. A lock whose process is
gone (same host, no such pid) is stale: it is taken over with a warning (logger "simjax").
A lock written on another host is never taken over (its process may be running there): the
error names the file to delete once that run is known to be over.
"""

from __future__ import annotations

import contextlib
import errno
import datetime
import json
import logging
import os
import platform
import sys
import time
from typing import Any, Iterator

from simjax.errors import WorkdirLocked

LOCK_FILE = ".lock"
# A lock file is written right after it is created; one still empty or unreadable after this
# long belongs to a process that died in between.
_UNREADABLE_STALE_SECONDS = 30.0

log = logging.getLogger("simjax")


@contextlib.contextmanager
def hold(workdir: str, *, read_only_ok: bool = False) -> Iterator[bool]:
  """Holds `workdir`'s lock for the `with` block (creating the workdir if needed); yields True.
  With `read_only_ok` (a reader, e.g. eval), a workdir where no file can be created (a
  read-only copy or mount: nothing can train there either) is used without a lock, with a
  warning, and the block gets False."""
  if not (read_only_ok and os.path.isdir(workdir)):
    os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    if read_only_ok and not os.access(workdir, os.W_OK):  # a lock left in a read-only copy binds no one
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), workdir)
    me = _acquire(workdir, path)
  except OSError as e:
    if not (read_only_ok and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
      raise
    log.warning(
      "%s is read-only (%s): used without a lock, and nothing is written there", workdir, e.strerror
    )
    yield False
    return
  try:
    yield True
  finally:
    _release(path, me)


def _acquire(workdir: str, path: str) -> dict[str, Any]:
  me = {
    "pid": os.getpid(),
    "host": platform.node(),
    "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "command": " ".join(sys.argv),
  }
  for _ in range(5):  # each pass either takes the lock, refuses, or clears a stale one
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read(path)
      if holder is None:
        continue  # released in the meantime
      if _alive(holder, path):
        raise WorkdirLocked(workdir, path, holder, same_host=holder.get("host") == me["host"]) from None
      _clear_stale(path, holder)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return me
  raise WorkdirLocked(workdir, path, _read(path) or {}, same_host=True)


def _read(path: str) -> dict[str, Any] | None:
  """The holder recorded in the lock file; {} if unreadable; None if there is no lock file."""
  try:
    with open(path) as f:
      holder = json.load(f)
    return holder if isinstance(holder, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


def release_if_other_host(workdir: str) -> dict[str, Any] | None:
  """Removes `workdir`'s lock if another host wrote it, and returns what it recorded (None:
  no lock, or one of this host's, which `hold` judges itself). Only for a caller that knows
  that host's run is over, e.g. a notebook whose previous runtime (another virtual machine)
  was lost with the lock still on shared storage: this module cannot tell from here."""
  path = os.path.join(workdir, LOCK_FILE)
  holder = _read(path)
  if not holder or holder.get("host") == platform.node():
    return None
  _clear_stale(path, holder)
  return holder


def _alive(holder: dict[str, Any], path: str) -> bool:
  if not holder:  # being written, or its writer died in between
    try:
      return time.time() - os.path.getmtime(path) < _UNREADABLE_STALE_SECONDS
    except FileNotFoundError:
      return False
  if holder.get("host") != platform.node():
    return True  # cannot tell from here
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # another user's process
  except (KeyError, TypeError, ValueError):
    return False  # no usable pid: not a lock this module wrote
  return True


def _clear_stale(path: str, holder: dict[str, Any]) -> None:
  """Moves the stale lock aside (one process wins the rename) and removes it; if what was
  moved is not the stale lock read (another process took over first), puts it back."""
  aside = f"{path}.stale.{os.getpid()}"
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return  # someone else cleared it
  moved = _read(aside)
  if moved != holder:
    with contextlib.suppress(OSError):
      os.link(aside, path)  # fails if a new lock exists already: then that one stands
    os.remove(aside)
    return
  os.remove(aside)
  log.warning(
    "took over the stale lock %s of process %s on %s (started %s), which is no longer running",
    path,
    holder.get("pid", "?"),
    holder.get("host", "?"),
    holder.get("started", "?"),
  )


def _release(path: str, me: dict[str, Any]) -> None:
  if _read(path) == me:  # never remove a lock another process took over
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
