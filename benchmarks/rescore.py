"""Re-score the kept answers of every benchmark run with the package's current metrics, and say what moved.

``accuracy.py`` keeps each evaluation's answers (``results[/<base>]/predictions/<run>.jsonl.gz``: target,
prediction and the score given then) beside the run's result (``results[/<base>]/accuracy/<run>.json``, ``sweeps/`` for runs with overrides). When a
metric's definition changes, this answers "does any published figure change?" without training anything: every
kept answer is scored again by the task's metric (``result.task_metrics``, the same for both protocols), the
cells are re-averaged and AA / BWT recomputed from the rows the answers cover (the zero-shot rows keep no answers,
so FWT is not re-scored).

    python benchmarks/rescore.py                     # every run with kept answers; a markdown report on stdout
    python benchmarks/rescore.py --changed-only      # only the runs where a cell moved
    python benchmarks/rescore.py --write             # and store the re-scored cells (and metrics) in the results

``--write`` replaces the moved cells' per-example scores and means in the result JSON (both protocols), recomputes
its AA / BWT / FWT / forgetting, and gives the kept answers their new scores (which ``diagnose.py`` reads); the
run's other fields stay as they were.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path

from common import RESULTS, markdown_table
from peft_continual.io_utils import atomic_write_bytes, atomic_write_text
from peft_continual.metrics import ContinualResult
from peft_continual.scoring import METRICS
from peft_continual.statistics import metrics_from_matrix


def read_answers(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def result_path(predictions: Path) -> Path:
    """The run's result JSON, beside the ``predictions`` folder (``<stem>.json`` in ``accuracy/``, or in ``sweeps/``
    for a run with overrides)."""
    name = predictions.name.removesuffix(".jsonl.gz") + ".json"
    return predictions.parent.parent / ("sweeps" if "__" in name else "accuracy") / name


def rescore_run(predictions: Path, write: bool = False) -> list[dict]:
    """One record per protocol: AA and BWT as published and as re-scored, and how many cells / answers moved; with
    ``write``, the re-scored cells replace the published ones in the result JSON."""
    path = result_path(predictions)
    data = json.loads(path.read_text(encoding="utf-8"))
    result = data.get("result", data)
    names, metrics = result["task_names"], result["task_metrics"]
    by_protocol = {result["evaluation_method"]: result, **result.get("secondary", {})}
    cells: dict[tuple[str, int, int], dict[str, list[float]]] = defaultdict(lambda: {"old": [], "new": []})
    answers = read_answers(predictions)
    for answer in answers:
        row = int(answer["after"].split("_")[1]) - 1
        key = (answer["protocol"], row, names.index(answer["task"]))
        cells[key]["old"].append(answer["score"])
        cells[key]["new"].append(METRICS[metrics[key[2]]](answer["prediction"], answer["target"]))
    records = []
    for protocol, published in by_protocol.items():
        matrix = [list(row) for row in published["accuracy_matrix"]]
        scored = [m is not None for m in published["task_metrics"]]
        moved_cells = moved_answers = 0
        for (p, i, j), scores in cells.items():
            if p != protocol:
                continue
            matrix[i][j] = sum(scores["new"]) / len(scores["new"])
            moved_answers += sum(a != b for a, b in zip(scores["old"], scores["new"]))
            if abs(matrix[i][j] - published["accuracy_matrix"][i][j]) > 1e-12:
                moved_cells += 1
                published["example_scores"][i][j] = scores["new"]
        before = metrics_from_matrix(published["accuracy_matrix"], scored=scored)
        after = metrics_from_matrix(matrix, scored=scored)
        published["accuracy_matrix"] = matrix
        records.append({
            "run": predictions.name.removesuffix(".jsonl.gz"), "protocol": protocol, "moved_cells": moved_cells,
            "moved_answers": moved_answers, **{f"{k}_{when}": v for when, m in (("published", before), ("rescored", after))
                                                for k, v in m.items() if k in ("average_accuracy", "backward_transfer")},
        })  # fmt: skip
    if write and any(r["moved_cells"] for r in records):
        result.update(ContinualResult.from_dict(result).to_dict())  # the summary metrics of the new cells
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    if write and any(r["moved_answers"] for r in records):
        for answer in answers:
            answer["score"] = METRICS[metrics[names.index(answer["task"])]](answer["prediction"], answer["target"])
        lines = "".join(json.dumps(answer) + "\n" for answer in answers)
        atomic_write_bytes(predictions, gzip.compress(lines.encode("utf-8"), mtime=0))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changed-only", action="store_true", help="list only the runs where a cell moved")
    parser.add_argument("--write", action="store_true", help="store the re-scored cells in the result JSONs")
    args = parser.parse_args()
    records = [r for path in sorted(RESULTS.glob("**/predictions/*.jsonl.gz")) for r in rescore_run(path, args.write)]
    total_answers = sum(r["moved_answers"] for r in records)
    shown = [r for r in records if r["moved_cells"] or not args.changed_only]

    def points(value):
        return "" if value is None else f"{100 * value:+.1f}" if value < 0 else f"{100 * value:.1f}"

    print(f"{len(records)} run-protocols re-scored, {sum(r['moved_cells'] > 0 for r in records)} with a moved cell, "
          f"{total_answers} answers scored differently\n")  # fmt: skip
    print(markdown_table(
        ["run", "protocol", "AA published → re-scored", "BWT published → re-scored", "cells moved", "answers moved"],
        [[r["run"], r["protocol"], f"{points(r['average_accuracy_published'])} → {points(r['average_accuracy_rescored'])}",
          f"{points(r['backward_transfer_published'])} → {points(r['backward_transfer_rescored'])}",
          r["moved_cells"], r["moved_answers"]] for r in shown],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
