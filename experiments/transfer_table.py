"""Tables of transfer records (transfer.json, written by --mode=transfer).

`set_lines(record)` is one encoder's full table: every set and each SemEval year's three
figures (all: the year's subsets pooled; mean; wmean: weighted by pairs), with the pairs scored
and the training pairs removed. `summary_lines(rows)` is the comparison: a row per encoder, a
column per dataset (the year's pooled figure, as SentEval reports it).
"""

from __future__ import annotations

from typing import Any


def _number(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def set_lines(record: dict[str, Any]) -> list[str]:
  """Markdown: a row per set (and per year figure); Spearman / Pearson x 100 of each score kind."""
  kinds = sorted({kind for s in record["sets"] for kind in s["scores"]}, key=["head", "cosine"].index)
  header = ["set", "pairs", "removed (trained on)", "unscored rows skipped", "unknown words"]
  header += [f"{kind} {m}" for kind in kinds for m in ("Spearman", "Pearson")]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for group in dict.fromkeys(s["group"] for s in record["sets"]):
    members = [s for s in record["sets"] if s["group"] == group]
    for s in members:
      cells = [
        f"{group} {s['set']}",
        str(s["pairs"]),
        str(s["removed_training_pairs"]),
        str(s["unscored_rows_skipped"]),
        f"{100 * s['unknown_token_fraction']:.1f}%",
      ]
      for kind in kinds:
        scores = s["scores"].get(kind) or {}
        cells += [_number(scores.get("spearman")), _number(scores.get("pearson"))]
      lines.append("| " + " | ".join(cells) + " |")
    figures = record["years"].get(group)
    if figures is not None:
      for figure in ("all", "mean", "wmean"):
        cells = [
          f"**{group} {figure}**",
          str(figures["pairs"]),
          str(figures["removed_training_pairs"]),
          "",
          "",
        ]
        for kind in kinds:
          scores = figures["scores"][kind][figure] or {}
          cells += [_number(scores.get("spearman")), _number(scores.get("pearson"))]
        lines.append("| " + " | ".join(cells) + " |")
  return lines


def group_figure(record: dict[str, Any], group: str, kind: str, metric: str = "spearman") -> float | None:
  """A dataset's one number: a year's pooled ("all") figure, or the set's own (STS-B test, SICK-R test)."""
  if group in record["years"]:
    figure = record["years"][group]["scores"].get(kind, {}).get("all")
    return None if figure is None else figure.get(metric)
  found = [s for s in record["sets"] if s["group"] == group and s["set"] == "test"]
  return (found[0]["scores"].get(kind) or {}).get(metric) if found else None


def summary_lines(rows: list[tuple[str, dict[str, Any], str]], metric: str = "spearman") -> list[str]:
  """Markdown: `rows` are (encoder name, record, score kind); columns the datasets."""
  groups = list(dict.fromkeys(s["group"] for _, record, _ in rows for s in record["sets"]))
  header = ["encoder", "score", *[("STSB test" if g == "STSB" else g) for g in groups]]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, record, kind in rows:
    cells = [name, kind, *[_number(group_figure(record, g, kind, metric)) for g in groups]]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def published_lines(published: list[tuple[str, str, dict[str, float]]]) -> list[str]:
  """Markdown: `published` rows are (encoder, source, {dataset column: figure x 100})."""
  columns = list(dict.fromkeys(c for _, _, figures in published for c in figures))
  lines = ["| encoder | source | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
  for encoder, source, figures in published:
    lines.append(
      f"| {encoder} | {source} | " + " | ".join(_published(figures.get(c)) for c in columns) + " |"
    )
  return lines


def _published(value: float | None) -> str:
  return "-" if value is None else f"{value:.1f}"
