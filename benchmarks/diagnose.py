"""Why a method forgot: what its wrong answers on each earlier task were, after the last task.

Reads the answers ``accuracy.py`` keeps (``results/predictions/<run>.jsonl.gz``) and sorts every wrong generated
answer on task j, after the last task, into: a label of task j itself (the task is still understood, the decision
moved), a label of another task of the sequence (the answer format of that task took over: format forgetting, which
label ranking cannot see), or anything else (empty, free text). Labels are compared after the same normalisation as
exact match.

    python benchmarks/diagnose.py results/predictions/seqlora_order1_seed0.jsonl.gz [more runs]

Prints one markdown table per run.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from pathlib import Path

from common import markdown_table
from peft_continual import STANDARD_ORDERS, load_continual_tasks
from peft_continual.scoring import normalize_answer

HERE = Path(__file__).resolve().parent


def read_answers(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def classify(prediction: str, own: set[str], others: dict[str, set[str]]) -> str:
    """'own label', 'label of <task>' (the first task whose label it is), or 'other text'."""
    answer = normalize_answer(prediction)
    if answer in own:
        return "own label"
    for task, labels in others.items():
        if answer in labels:
            return f"label of {task}"
    return "other text"


def last_wrong(rows: list[dict], protocol: str = "generate") -> list[dict]:
    """The wrong answers of the evaluation after the last task (stages are named after_<i>_<task>)."""
    last = max(int(r["after"].split("_")[1]) for r in rows)
    return [r for r in rows if int(r["after"].split("_")[1]) == last and r["protocol"] == protocol and r["score"] != 1.0]


def wrong_answers(rows: list[dict], labels: dict[str, list[str]], protocol: str = "generate") -> dict[str, Counter]:
    """Per task: counts of each kind of wrong answer after the last task (classification tasks only)."""
    normalised = {task: {normalize_answer(label) for label in names} for task, names in labels.items()}
    kinds: dict[str, Counter] = {}
    for row in last_wrong(rows, protocol):
        if row["task"] not in labels:
            continue
        others = {t: names for t, names in normalised.items() if t != row["task"]}
        kinds.setdefault(row["task"], Counter())[classify(row["prediction"], normalised[row["task"]], others)] += 1
    return kinds


def report(path: Path, data_dir: Path) -> str:
    name = path.name.removesuffix(".jsonl.gz")  # <method>_order<k>_seed<s>[__<overrides>]
    order = int(name.split("_order")[1].split("_")[0])
    tasks = load_continual_tasks(STANDARD_ORDERS[order], data_dir, max_eval_samples=1)
    labels = {t.name: t.labels for t in tasks}
    rows = read_answers(path)
    kinds = wrong_answers(rows, labels)
    columns = ["own label", *[f"label of {t}" for t in labels], "other text"]
    table = [[task, sum(counts.values()), *[counts.get(c, 0) for c in columns]] for task, counts in kinds.items()]
    examples = Counter((r["task"], r["prediction"]) for r in last_wrong(rows))
    common = "; ".join(f"{task}: {prediction!r} ×{n}" for (task, prediction), n in examples.most_common(6))
    return (f"#### {name}: wrong generated answers after the last task\n\n"
            + markdown_table(["task", "wrong", *columns], table) + f"\n\nMost frequent wrong answers: {common}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "cl_benchmark")
    args = parser.parse_args()
    missing = [str(path) for path in args.runs if not path.is_file()]
    if missing:  # before any report: a typo in the third of three runs should not cost the first two's time
        kept = sorted(p.name for p in (HERE / "results" / "predictions").glob("*.jsonl.gz"))
        raise SystemExit(f"no kept answers at {', '.join(missing)}; accuracy.py keeps them in "
                         f"benchmarks/results/predictions/, which holds: {', '.join(kept) or 'nothing yet'}")  # fmt: skip
    for path in args.runs:
        print(report(path, args.data_dir))


if __name__ == "__main__":
    main()
