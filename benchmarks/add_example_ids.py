"""Give results saved before example ids were recorded the ids of their test examples (no model, no training).

The bootstrap resamples the test examples that runs share jointly (:mod:`peft_continual.statistics`); it knows
which they share from ``result.example_ids``, which ``accuracy.py`` records since then. A result without them is
rebuilt here from the config it stores: the same sequence, order, seed and subsample give the same test examples
(``accuracy.load_tasks``), checked against the answers kept under ``predictions/`` where there are some (every kept
target must be the rebuilt example's). The ids are written into the result JSON; nothing else changes.

    python benchmarks/add_example_ids.py [--data-dir ../shared/data/cl_benchmark]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
from pathlib import Path

import accuracy
from common import RESULTS
from peft_continual.io_utils import atomic_write_text


def kept_targets(result_file: Path) -> dict[tuple[str, int], str]:
    """(task, example) -> target of the answers kept for this run, if any."""
    answers = result_file.parent.parent / "predictions" / (result_file.stem + ".jsonl.gz")
    if not answers.is_file():
        return {}
    with gzip.open(answers, "rt", encoding="utf-8") as f:
        return {(a["task"], a["example"]): a["target"] for a in map(json.loads, filter(str.strip, f))}


def add_ids(path: Path, data_dir: Path) -> bool:
    """Write the ids into ``path`` (False: it had them already, or has no per-example scores)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("example_ids") is not None or not data.get("example_scores"):  # no scores: nothing to resample
        return False
    benchmark = data["benchmark"]
    config = copy.deepcopy(benchmark["config"])
    config["data"]["data_dir"] = str(data_dir.resolve())
    tasks = {t.name: t for t in accuracy.load_tasks(config, benchmark["order"], benchmark["seed"])}
    for (task, example), target in kept_targets(path).items():
        rebuilt = tasks[task].eval[example]["label" if tasks[task].labels else "completion"]
        if rebuilt != target:
            raise SystemExit(f"{path}: example {example} of {task} is {rebuilt!r} rebuilt, {target!r} kept: is "
                             "--data-dir the data the run used?")  # fmt: skip
    data["example_ids"] = [tasks[name].example_ids() for name in data["task_names"]]
    if [len(ids) for ids in data["example_ids"]] != [len(scores) for scores in data["example_scores"][-1]]:
        raise SystemExit(f"{path}: the rebuilt test sets do not have the run's sizes")
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=accuracy.HERE.parent.parent / "shared" / "data" / "cl_benchmark")
    args = parser.parse_args()
    files = [p for folder in ("accuracy", "sweeps", "generation/accuracy") for p in sorted((RESULTS / folder).glob("*.json"))]
    added = sum(add_ids(p, args.data_dir) for p in files)
    print(f"{added} of {len(files)} results given example ids")


if __name__ == "__main__":
    main()
