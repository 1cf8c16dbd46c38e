"""Layered flagfiles: `--flagfile=NAME` arguments expanded before absl parses the command line.

A flagfile may include another with a `--flagfile=<base>.flags` line: a variant includes its base,
then lists only what differs (a later line wins, so a line after the include overrides the base).
absl resolves a nested name against the current directory only; `expand` looks a name up as given
(relative to the current directory) first, then next to the including file, or in experiments/ for
a name on the command line, so `--flagfile=cnn_gap.flags` works from any directory.

Lines are read as absl reads them (absl/flags/_flagvalues.py, `_get_flag_file_lines`): blank lines
and lines starting with '#' or '//' are skipped, every other line is one argument, stripped, put in
place of the --flagfile argument. On the command line, as in absl, `--flagfile=NAME`,
`-flagfile=NAME`, `--flagfile NAME` and `-flagfile NAME` include a file, and nothing after `--` is
expanded. Stricter than absl: a file that includes itself (directly or not) is an error, where absl
warns and skips it, and a line is stripped before it is classified, so an indented comment is
skipped and an indented include is expanded (absl would pass them on as an argument and as a flag
that does nothing).
"""

from __future__ import annotations

import os

EXPERIMENTS_DIR = os.path.dirname(os.path.abspath(__file__))
_INCLUDE_PREFIXES = ("--flagfile=", "-flagfile=")
_INCLUDE_ALONE = ("--flagfile", "-flagfile")  # the file name is the next argument


class FlagfileError(ValueError):
  """A flagfile that cannot be found or read, or that includes itself."""


def available_flagfiles(directory: str = EXPERIMENTS_DIR) -> list[str]:
  """The names of the flagfiles in `directory` (experiments/), sorted."""
  try:
    return sorted(name for name in os.listdir(directory) if name.endswith(".flags"))
  except OSError:
    return []


def expand(argv: list[str], directory: str = EXPERIMENTS_DIR) -> list[str]:
  """argv with each flagfile argument (argv[0] excluded) replaced by its file's lines, recursively.

  A name on the command line is looked up as given, then in `directory`; an included name as
  given, then next to the file that includes it. Raises FlagfileError for a missing or unreadable
  file and for an include cycle.
  """
  if not argv:
    return []
  expanded = [argv[0]]
  args = list(argv[1:])
  i = 0
  while i < len(args):
    arg = args[i]
    i += 1
    if arg == "--":  # absl stops reading flags (and flagfiles) here
      expanded.extend(args[i - 1 :])
      break
    if arg in _INCLUDE_ALONE:
      if i == len(args):
        raise FlagfileError(f"{arg} with no file name")
      name = os.path.expanduser(args[i])
      i += 1
    elif arg.startswith(_INCLUDE_PREFIXES):
      name = _included_name(arg)
    else:
      expanded.append(arg)
      continue
    expanded.extend(_read(name, including=None, directory=directory, stack=[]))
  return expanded


def _included_name(directive: str) -> str:
  return os.path.expanduser(directive.split("=", 1)[1].strip())


def _read(name: str, including: str | None, directory: str, stack: list[str]) -> list[str]:
  """The flag lines of flagfile `name`, its includes expanded; `stack`: the files being read."""
  if not name:  # absl ignores `--flagfile=` with no name
    return []
  path = _find(name, including, directory)
  if path in stack:
    cycle = " -> ".join([*stack[stack.index(path) :], path])
    raise FlagfileError(f"flagfile {name!r} includes itself: {cycle}")
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.readlines()
  except (OSError, UnicodeDecodeError) as e:
    raise FlagfileError(f"flagfile {name!r}: cannot read {path}: {e}") from e
  stack.append(path)
  flag_lines = []
  for line in lines:
    line = line.strip()
    if not line or line.startswith(("#", "//")):
      continue
    if line in _INCLUDE_ALONE:
      raise FlagfileError(f"{path}: {line!r} without '=NAME' (a flagfile holds one argument per line)")
    if line.startswith(_INCLUDE_PREFIXES):
      flag_lines.extend(_read(_included_name(line), including=path, directory=directory, stack=stack))
    else:
      flag_lines.append(line)
  stack.pop()
  return flag_lines


def _find(name: str, including: str | None, directory: str) -> str:
  """The real path of flagfile `name`: as given, then next to `including` (else in `directory`)."""
  fallback = os.path.join(os.path.dirname(including) if including else directory, name)
  candidates = list(dict.fromkeys(os.path.abspath(path) for path in (name, fallback)))
  for path in candidates:
    if os.path.isfile(path):
      return os.path.realpath(path)
  source = f" (included by {including})" if including else ""
  available = ", ".join(available_flagfiles(directory)) or "none"
  raise FlagfileError(
    f"flagfile {name!r}{source} not found (looked in {' and '.join(candidates)}); "
    f"available in {directory}: {available}"
  )
