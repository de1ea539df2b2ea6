"""Why a method forgot: what its wrong answers on each earlier task were, after the last task.

Reads the answers ``accuracy.py`` keeps (``results[/<base>]/predictions/<run>.jsonl.gz``) with the run's result
beside them, rebuilds the run's test set from the config that result stores (same sequence, order, seed and
subsample), and sorts every wrong generated answer on task j, after the last task, into: a label of task j itself
(the task is still understood, the decision moved), a label of another task of the sequence (that task's answer
format took over: format forgetting, which label ranking cannot see), an empty answer, words copied from the
example's input (the model echoes the question instead of answering it), or anything else. Answers are compared after
the same normalisation as exact match.

    python benchmarks/diagnose.py results/predictions/seqlora_order1_seed0.jsonl.gz [more runs]
    python benchmarks/diagnose.py results/generation/predictions/seqlora_order1_seed0.jsonl.gz

Prints one markdown table per run.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
from collections import Counter
from pathlib import Path

import accuracy
from common import markdown_table
from peft_continual.scoring import normalize_answer

HERE = Path(__file__).resolve().parent


def read_answers(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def classify(prediction: str, own: set[str], others: dict[str, set[str]], source: str = "") -> str:
    """'own label', 'label of <task>' (the first task whose label it is), 'empty', 'copied from the input' (its
    words appear, in order and contiguous, in the example's input ``source``), or 'other text'."""
    answer = normalize_answer(prediction)
    if answer in own:
        return "own label"
    for task, labels in others.items():
        if answer in labels:
            return f"label of {task}"
    if not answer:
        return "empty"
    if f" {answer} " in f" {normalize_answer(source)} ":
        return "copied from the input"
    return "other text"


def last_wrong(rows: list[dict], protocol: str = "generate") -> list[dict]:
    """The wrong answers of the evaluation after the last task (stages are named after_<i>_<task>)."""
    last = max(int(r["after"].split("_")[1]) for r in rows)
    return [r for r in rows if int(r["after"].split("_")[1]) == last and r["protocol"] == protocol and r["score"] != 1.0]


def wrong_answers(rows: list[dict], labels: dict[str, list[str]], inputs: dict[str, list[str]] | None = None,
                  protocol: str = "generate") -> dict[str, Counter]:  # fmt: skip
    """Per task: counts of each kind of wrong answer after the last task. ``labels`` holds every task of the sequence
    (an empty list for a generation task); ``inputs[task][example]`` is the example's input text."""
    normalised = {task: {normalize_answer(label) for label in names} for task, names in labels.items()}
    kinds: dict[str, Counter] = {}
    for row in last_wrong(rows, protocol):
        if row["task"] not in labels:
            continue
        others = {t: names for t, names in normalised.items() if t != row["task"] and names}
        source = inputs[row["task"]][row["example"]] if inputs else ""
        kind = classify(row["prediction"], normalised[row["task"]], others, source)
        kinds.setdefault(row["task"], Counter())[kind] += 1
    return kinds


def result_of(path: Path) -> Path | None:
    """The result JSON of kept answers: ``<root>/accuracy/<run>.json``, or ``<root>/sweeps/`` for a run with --set."""
    name = path.name.removesuffix(".jsonl.gz")
    found = [p for p in (path.parent.parent / folder / f"{name}.json" for folder in ("accuracy", "sweeps")) if p.is_file()]
    return found[0] if found else None


def example_input(task, row: dict) -> str:
    """What the model was asked about: the classified text, or the generation prompt with its earlier turns."""
    if task.labels:
        return row["text"]
    turns = json.loads(row["context"]) if row.get("context") else []
    return "\n".join([*(turn["content"] for turn in turns), row["prompt"]])


def report(path: Path, data_dir: Path) -> str:
    benchmark = json.loads(result_of(path).read_text())["benchmark"]
    config = copy.deepcopy(benchmark["config"])
    config["data"]["data_dir"] = str(data_dir.resolve())
    tasks = accuracy.load_tasks(config, benchmark["order"], benchmark["seed"])  # the run's own test subsample
    rows = read_answers(path)
    targets = {t.name: list(t.eval["label" if t.labels else "completion"]) for t in tasks}
    for r in rows:  # a kept answer whose target differs from the rebuilt example's would be diagnosed on the wrong input
        if r["task"] in targets and targets[r["task"]][r["example"]:r["example"] + 1] != [r["target"]]:
            raise SystemExit(f"{path}: example {r['example']} of {r['task']} does not match the test set rebuilt from "
                             f"its result's config (is --data-dir the data the run used?)")  # fmt: skip
    labels = {t.name: list(t.labels) for t in tasks}
    inputs = {t.name: [example_input(t, row) for row in t.eval] for t in tasks}
    kinds = wrong_answers(rows, labels, inputs)
    classified = [t for t in tasks if t.labels]
    columns = [*(["own label"] if classified else []), *[f"label of {t.name}" for t in classified],
               "empty", "copied from the input", "other text"]  # fmt: skip
    table = [[task, sum(counts.values()), *[counts.get(c, 0) for c in columns]] for task, counts in kinds.items()]
    examples = Counter((r["task"], r["prediction"]) for r in last_wrong(rows))
    common = "; ".join(f"{task}: {prediction!r} ×{n}" for (task, prediction), n in examples.most_common(6))
    return (f"#### {path.name.removesuffix('.jsonl.gz')}: wrong generated answers after the last task\n\n"
            + markdown_table(["task", "wrong", *columns], table) + f"\n\nMost frequent wrong answers: {common}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "cl_benchmark")
    args = parser.parse_args()
    missing = [str(path) for path in args.runs if not path.is_file()]
    if missing:  # before any report: a typo in the third of three runs should not cost the first two's time
        kept = sorted(str(p.relative_to(HERE)) for p in (HERE / "results").glob("**/predictions/*.jsonl.gz"))
        raise SystemExit(f"no kept answers at {', '.join(missing)}; accuracy.py keeps them in "
                         f"benchmarks/results[/<base>]/predictions/, which hold: {', '.join(kept) or 'nothing yet'}")  # fmt: skip
    orphans = [str(path) for path in args.runs if result_of(path) is None]
    if orphans:
        raise SystemExit(f"no result beside {', '.join(orphans)}: diagnose.py rebuilds the test set from the run's "
                         f"result (../accuracy/<run>.json or ../sweeps/<run>.json next to the predictions folder)")  # fmt: skip
    for path in args.runs:
        print(report(path, args.data_dir))


if __name__ == "__main__":
    main()
