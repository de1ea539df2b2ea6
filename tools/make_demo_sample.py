#!/usr/bin/env python
"""Write the demo sample shipped in ``peft_continual/data/demo`` from the full CL benchmark data.

    python tools/make_demo_sample.py ../shared/data/cl_benchmark

For each demo task: ``TRAIN_PER_LABEL`` training rows per label from ``train.json`` and about ``EVAL_ROWS`` rows from
``test.json`` (the same number per label), drawn at random with a fixed seed and kept in file order; ``labels.json``
is copied. Rerunning it on the same data rewrites the same bytes.
"""

import argparse
import json
import math
import random
from pathlib import Path

TASKS = {"dbpedia": "TC", "amazon": "SC", "agnews": "TC"}
TRAIN_PER_LABEL = 16
EVAL_ROWS = 80
SEED = 0
DEMO_DIR = Path(__file__).resolve().parents[1] / "peft_continual" / "data" / "demo"


def sample(rows: list[dict], per_label: int, rng: random.Random) -> list[dict]:
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row["label"], []).append(i)
    chosen = []
    for label in sorted(by_label):
        indices = by_label[label]
        if len(indices) < per_label:
            raise SystemExit(f"label {label!r} has {len(indices)} rows, fewer than {per_label}")
        chosen += rng.sample(indices, per_label)
    return [{"sentence": rows[i]["sentence"], "label": rows[i]["label"]} for i in sorted(chosen)]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="folder holding CL_Benchmark/")
    parser.add_argument("--output_dir", type=Path, default=DEMO_DIR)
    args = parser.parse_args()
    for name, task_type in TASKS.items():
        source, target = args.data_dir / "CL_Benchmark" / task_type / name, args.output_dir / task_type / name
        target.mkdir(parents=True, exist_ok=True)
        labels = json.loads((source / "labels.json").read_text(encoding="utf-8"))
        rng = random.Random(f"{SEED}-{name}")
        train = sample(json.loads((source / "train.json").read_text(encoding="utf-8")), TRAIN_PER_LABEL, rng)
        test = sample(json.loads((source / "test.json").read_text(encoding="utf-8")), math.ceil(EVAL_ROWS / len(labels)), rng)
        write_rows(target / "train.json", train)
        write_rows(target / "test.json", test)
        (target / "labels.json").write_text(json.dumps(labels, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{task_type}/{name}: {len(train)} train, {len(test)} test rows, {len(labels)} labels")


if __name__ == "__main__":
    main()
