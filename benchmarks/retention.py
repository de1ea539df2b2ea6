"""What each method did to the base model's general ability, from benchmark runs with retention tasks.

A run of ``accuracy.py`` with ``--set 'trainer.retention_tasks=["general"]'`` keeps, beside its task matrix, the
quick general suite scored on the base model and after every task (``result.retention``). This prints, per run, the
tasks' AA / BWT next to each retention measure after the last task (change from the base, 95 % paired interval over
the items), then paired contrasts between methods on the same items (every run scores the same suite items against
the same base model, so their per-item scores pair), with the tasks' AA and BWT paired on the test examples.

    python benchmarks/retention.py results/sweeps/*retention_tasks*.json

Prints markdown (the RESULTS.md section "What each method does to the base model's general ability").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import markdown_table
from peft_continual.metrics import ContinualResult
from peft_continual.retention import format_change, format_value
from peft_continual.statistics import MissingExampleScores, RunScores, paired_comparison, paired_item_difference

MEASURES = ("general/facts", "general/kl", "general/agreement", "general/leak")


def load(paths: list[Path]) -> dict[str, tuple[ContinualResult, dict]]:
    """Runs with a retention block, by name: (result, the raw JSON, whose benchmark block and scores pair runs)."""
    runs = {}
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        result = ContinualResult.from_dict(data)
        if result.retention:  # named by method, order, seed and any override but the retention one
            parts = [part for part in path.stem.split("__") if part and "retention_tasks" not in part and part != "general"]
            runs[" ".join(parts)] = (result, data)
    return runs


def task_contrast(a: dict, b: dict) -> dict | None:
    """A − B on the tasks (AA, BWT), paired on the test examples; None unless both share order, seed and scores."""
    where_a, where_b = a.get("benchmark") or {}, b.get("benchmark") or {}
    same = bool(where_a) and all(where_a.get(k) == where_b.get(k) for k in ("order", "seed"))
    try:
        return paired_comparison([[RunScores.from_result(a)]], [[RunScores.from_result(b)]]) if same else None
    except MissingExampleScores:
        return None


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="result JSONs of runs with retention tasks")
    parser.add_argument("--against", nargs="+", metavar="RUN", default=None,
                        help="contrast every run with these runs only (names as the table prints them); default: every pair")
    args = parser.parse_args()
    runs = load(args.results)
    unknown = set(args.against or ()) - set(runs)
    if unknown:
        raise SystemExit(f"--against: no run named {sorted(unknown)}; runs: {sorted(runs)}")
    if not runs:
        raise SystemExit("no result with a retention block among the files given")
    header = ["run", "AA", "BWT", *(f"{m.split('/')[1]} (base → final, change [95 %])" for m in MEASURES)]
    rows = []
    for name, (result, _) in runs.items():
        cells = []
        for measure in MEASURES:
            track = result.retention.get(measure)
            cells.append("–" if track is None else
                         f"{format_value(track, track.scores[0])} → {format_value(track, track.scores[-1])} ({format_change(track)})")
        rows.append([name, pct(result.average_accuracy), f"{100 * result.backward_transfer:+.1f}", *cells])
    print(markdown_table(header, rows))
    names = list(runs)
    contrasts = []
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]] if args.against is None else \
        [(a, b) for b in args.against for a in names if a != b]  # fmt: skip
    for a, b in pairs:
        tasks = task_contrast(runs[a][1], runs[b][1])
        for metric, label in (("average_accuracy", "AA (tasks)"), ("backward_transfer", "BWT (tasks)")):
            d = tasks and tasks.get(metric)
            if d is not None:
                verdict = "significant" if d.significant else "not significant"
                contrasts.append([f"{a} − {b}", label, f"{100 * d.estimate:+.1f} [{100 * d.low:+.1f}, "
                                  f"{100 * d.high:+.1f}]", verdict])  # fmt: skip
        for measure in MEASURES:
            ta, tb = runs[a][0].retention.get(measure), runs[b][0].retention.get(measure)
            if not ta or not tb or ta.example_scores[-1] is None or tb.example_scores[-1] is None:
                continue
            d = paired_item_difference(ta.example_scores[-1], tb.example_scores[-1])
            verdict = "significant" if d.significant else "not significant"
            contrasts.append([f"{a} − {b}", measure.split("/")[1], f"{format_value(ta, d.estimate, True)} "
                              f"[{format_value(ta, d.low, True)}, {format_value(ta, d.high, True)}]", verdict])  # fmt: skip
    if contrasts:
        print()
        print(markdown_table(["pair", "measure", "difference after the last task [95 %]", "verdict"], contrasts))


if __name__ == "__main__":
    main()
