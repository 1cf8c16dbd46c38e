"""What the console shows and reads: the epoch table, progress bars, seed summaries, sentence
pairs typed or piped in, and quiet library logs."""

from __future__ import annotations

import codecs
import logging as std_logging  # absl's logging is `logging` here
import os
import sys
from typing import Any

from absl import logging
from tqdm.auto import tqdm

from experiments.cli_flags import FLAGS
from simjax import distributed, errors


def seed_summary_lines(results: dict[str, Any], keys: list[tuple[str, str]]) -> list[str]:
  """'test Pearson 0.7190 ± 0.0050 (min 0.71, max 0.73, n=5)' lines from results.json's summary."""
  lines = []
  for label, key in keys:
    s = results["summary"].get(key)
    if s is not None:
      lines.append(
        f"  {label:18s} {s['mean']:.4f} ± {s['std']:.4f}  (min {s['min']:.4f}, max {s['max']:.4f}, n={s['n']})"
      )
  return lines


class EpochTable:
  """Prints one aligned row per epoch, like the study's tables."""

  def __init__(self, columns: list[tuple[str, str, str]]):
    self.columns = columns  # (header, key, format)
    self._header_printed = False

  def print_row(self, row: dict[str, Any]) -> None:
    if not self._header_printed:
      print("  ".join(f"{header:>12s}" for header, _, _ in self.columns), flush=True)
      self._header_printed = True
    cells = []
    for _, key, fmt in self.columns:
      value = row.get(key)
      cells.append(f"{format(value, fmt):>12s}" if value is not None else f"{'-':>12s}")
    print("  ".join(cells), flush=True)


def progress_bar(total: int, description: str):
  """A progress bar within long epochs, shown only on a terminal (None elsewhere: no bar, and
  the steps are never waited for to count them)."""
  if not distributed.is_primary() or not sys.stderr.isatty():  # one bar per run, not one per process
    return None
  return tqdm(total=total, desc=description, leave=False, unit="step", file=sys.stderr)


def read_sentence_pairs(data: bytes, name: str) -> tuple[list[str], list[str]]:
  """'sentence1<TAB>sentence2' lines of a file's (or stdin's) bytes: UTF-8, a leading byte-order
  mark dropped (spreadsheet exports write one), any line ending (\\n, \\r\\n, \\r)."""
  first, second = [], []
  data = data.removeprefix(codecs.BOM_UTF8)
  for line_number, raw in enumerate(data.splitlines(), 1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(
        f"{name}, line {line_number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
        "save the file as UTF-8"
      ) from None
    if not line:  # a blank line holds no pair; "\t" alone is a pair of empty sentences
      continue
    parts = line.split("\t")
    if len(parts) != 2:
      raise ValueError(
        f"{name}, line {line_number}: expected 'sentence1<TAB>sentence2', "
        f"found {len(parts)} tab-separated field(s)"
      )
    first.append(parts[0])
    second.append(parts[1])
  return first, second


def read_input(path: str, wanted: str) -> bytes:
  """The bytes of the file at `path` ('-': of stdin) that a predict mode reads. One that cannot
  be read is a ValueError saying why in words, then `wanted`: what to pass instead."""
  try:
    if path == "-":
      if sys.stdin is None:  # the shell closed it (`<&-`): Python then has no sys.stdin at all
        raise ValueError(f"stdin is closed: pass {wanted}")
      return sys.stdin.buffer.read()
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise ValueError(f"{errors.path_problem('stdin' if path == '-' else path, e)}: pass {wanted}") from None


def _quiet_unraisable(unraisable) -> None:
  """Drops one known noise: when orbax fails to restore a damaged checkpoint (simjax then
  warns and falls back), tensorstore's late callbacks reach event loops orbax has already
  closed, and Python would print each as a traceback. Anything else is printed as usual."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def _not_from_orbax(record: std_logging.LogRecord) -> bool:
  return f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_library_logs() -> None:
  """Orbax and TFDS log every step of every save at INFO, and routine notes (e.g. a
  read-only checkpoint folder during eval) at WARNING; keep the console for results unless
  the user asked for more with -v / --verbosity. Real failures arrive as exceptions."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
    # Orbax also logs, with its traceback, each failure of its worker threads (e.g. a full
    # disk during a save) before the same failure reaches simjax as an exception.
    std_logging.getLogger("absl").addFilter(_not_from_orbax)
    # ...and the same failure of its other tasks, as Python collects them (simjax uses no asyncio).
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
  sys.unraisablehook = _quiet_unraisable
  # simjax's own warnings (e.g. a stale workdir lock taken over) are for the user: one line each.
  simjax_log = std_logging.getLogger("simjax")
  if not simjax_log.handlers:
    handler = std_logging.StreamHandler(sys.stderr)
    handler.setFormatter(std_logging.Formatter("warning: %(message)s"))
    simjax_log.addHandler(handler)
    simjax_log.setLevel(std_logging.WARNING)
    simjax_log.propagate = False
