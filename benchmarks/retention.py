"""What each method did to the base model's general ability, from benchmark runs with retention tasks.

A run of ``accuracy.py`` with ``--set 'trainer.retention_tasks=["general"]'`` keeps, beside its task matrix, the
quick general suite scored on the base model and after every task (``result.retention``). This prints, per run, the
tasks' AA / BWT next to each retention measure after the last task (change from the base, 95 % paired interval over
the items), then paired contrasts between methods on the same items (every run scores the same suite items against
the same base model, so their per-item scores pair), with the tasks' AA and BWT paired on the test examples.

    python benchmarks/retention.py results/sweeps/*retention_tasks*.json

Runs of several seeds (same method, order and settings) are one row: means over the seeds, intervals by bootstrap
over seeds and items; contrasts pair the seeds both sides have. A run without retention tasks (an earlier run of the
same benchmark, e.g. ``results/generation/accuracy/replay_order1_seed0.json``) is a row "NAME (tasks only)" that
joins the task contrasts only.

Prints markdown (the RESULTS.md section "What each method does to the base model's general ability").
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from common import markdown_table
from peft_continual.metrics import ContinualResult
from peft_continual.retention import format_value
from peft_continual.statistics import (MissingExampleScores, RunScores, bootstrap_metrics, paired_comparison,
                                       paired_item_difference)  # fmt: skip

MEASURES = ("general/facts", "general/kl", "general/agreement", "general/leak")


def load(paths: list[Path]) -> dict[str, dict[int, tuple[ContinualResult, dict]]]:
    """Runs by name (method, order and any override but the retention one; "(tasks only)" for a run without a
    retention block), then by seed: (result, the raw JSON, whose benchmark block and scores pair runs)."""
    groups: dict[str, dict[int, tuple[ContinualResult, dict]]] = {}
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        result = ContinualResult.from_dict(data)
        parts = [part for part in path.stem.split("__") if part and "retention_tasks" not in part and part != "general"]
        name = re.sub(r"_seed\d+$", "", " ".join(parts[:1])) + "".join(f" {part}" for part in parts[1:])
        name += "" if result.retention else " (tasks only)"
        groups.setdefault(name, {})[(data.get("benchmark") or {}).get("seed", 0)] = (result, data)
    return {name: dict(sorted(runs.items())) for name, runs in groups.items()}


def task_contrast(a: list[dict], b: list[dict]) -> dict | None:
    """A − B on the tasks (AA, BWT), paired on seeds and test examples; None unless each pair shares order and seed
    and has scores."""
    same = all(x.get("benchmark") and all(x["benchmark"].get(k) == y.get("benchmark", {}).get(k) for k in ("order", "seed"))
               for x, y in zip(a, b))  # fmt: skip
    try:
        return paired_comparison([[RunScores.from_result(x) for x in a]], [[RunScores.from_result(y) for y in b]]) \
            if same else None  # fmt: skip
    except MissingExampleScores:
        return None


def item_scores(runs: list[ContinualResult], measure: str, row: int = -1) -> np.ndarray | None:
    """Seeds x items: each run's per-item scores of a measure on the base (row 0) or after the last task (-1)."""
    tracks = [run.retention.get(measure) for run in runs]
    if any(t is None or t.example_scores[row] is None for t in tracks):
        return None
    return np.array([t.example_scores[row] for t in tracks], dtype=np.float64)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def interval(track, d) -> str:
    return f"{format_value(track, d.estimate, True)} [{format_value(track, d.low, True)}, {format_value(track, d.high, True)}]"


def trade_off_plot(groups: dict[str, dict[int, tuple[ContinualResult, dict]]], path: Path) -> None:
    """Tasks against general ability: each run's AA (x) and token agreement with the base after its last task (y),
    with 95 % intervals over seeds and test examples / items: where a method sits between the two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    markers = "osD^vP*Xhp<>"
    for k, (name, runs) in enumerate(groups.items()):
        results, datas = [r for r, _ in runs.values()], [d for _, d in runs.values()]
        agreement = item_scores(results, "general/agreement")
        if agreement is None:
            continue
        try:
            aa = bootstrap_metrics([RunScores.from_result(d) for d in datas])["average_accuracy"]
        except MissingExampleScores:
            continue
        y = paired_item_difference(agreement, np.zeros_like(agreement))  # the mean's interval: its difference from 0
        xerr = [[100 * (aa.estimate - aa.low)], [100 * (aa.high - aa.estimate)]]
        yerr = [[100 * (y.estimate - y.low)], [100 * (y.high - y.estimate)]]
        ax.errorbar(100 * aa.estimate, 100 * y.estimate, xerr=xerr, yerr=yerr, fmt=markers[k % len(markers)], capsize=3,
                    color=plt.cm.tab20((2 * k + k // 10) % 20), label=f"{name} (seeds {','.join(map(str, runs))})")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    ax.set_xlabel("AA on the tasks (%)")
    ax.set_ylabel("token agreement with the base after the last task (%)")
    ax.set_title("Tasks vs general ability (95 % intervals)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(staging, dpi=90, bbox_inches="tight")
    plt.close(fig)
    staging.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path,
                        help="result JSONs of runs with retention tasks (and, for the task contrasts, runs without)")
    parser.add_argument("--against", nargs="+", metavar="RUN", default=None,
                        help="contrast every run with these runs only (names as the table prints them); default: every pair")
    parser.add_argument("--contrast_measures", nargs="+", metavar="MEASURE", default=None,
                        choices=[m.split("/")[1] for m in MEASURES],
                        help="retention measures the contrasts show (default: all; the run table always shows all)")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help="also draw AA against token agreement with the base, one point per run, to this file")
    args = parser.parse_args()
    groups = load(args.results)
    unknown = set(args.against or ()) - set(groups)
    if unknown:
        raise SystemExit(f"--against: no run named {sorted(unknown)}; runs: {sorted(groups)}")
    if not any(result.retention for runs in groups.values() for result, _ in runs.values()):
        raise SystemExit("no result with a retention block among the files given")
    header = ["run", "seeds", "AA", "BWT", *(f"{m.split('/')[1]} (base → final, change [95 %])" for m in MEASURES)]
    rows = []
    for name, runs in groups.items():
        results = [result for result, _ in runs.values()]
        cells = []
        for measure in MEASURES:
            base, final = item_scores(results, measure, 0), item_scores(results, measure)
            track = results[0].retention.get(measure)
            cells.append("–" if base is None or final is None else
                         f"{format_value(track, base.mean())} → {format_value(track, final.mean())} "
                         f"({interval(track, paired_item_difference(final, base))})")  # fmt: skip
        aa, bwt = (np.mean([getattr(r, m) for r in results]) for m in ("average_accuracy", "backward_transfer"))
        rows.append([name, ",".join(map(str, runs)), pct(aa), f"{100 * bwt:+.1f}", *cells])
    print(markdown_table(header, rows))
    if args.plot:
        trade_off_plot(groups, args.plot)
    names = list(groups)
    contrasts = []
    if args.against is None:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    else:  # a pair of two --against runs once, in the order they were given
        pairs = [(a, b) for j, b in enumerate(args.against) for a in names if a != b and a not in args.against[:j]]
    shown = [m for m in MEASURES if args.contrast_measures is None or m.split("/")[1] in args.contrast_measures]
    for a, b in pairs:
        seeds = [seed for seed in groups[a] if seed in groups[b]]
        if not seeds:
            continue
        runs_a, runs_b = ([groups[name][seed] for seed in seeds] for name in (a, b))
        label = ",".join(map(str, seeds))
        tasks = task_contrast([data for _, data in runs_a], [data for _, data in runs_b])
        for metric, what in (("average_accuracy", "AA (tasks)"), ("backward_transfer", "BWT (tasks)")):
            d = tasks and tasks.get(metric)
            if d is not None:
                verdict = "significant" if d.significant else "not significant"
                contrasts.append([f"{a} − {b}", label, what, f"{100 * d.estimate:+.1f} [{100 * d.low:+.1f}, "
                                  f"{100 * d.high:+.1f}]", verdict])  # fmt: skip
        for measure in shown:
            final_a, final_b = item_scores([r for r, _ in runs_a], measure), item_scores([r for r, _ in runs_b], measure)
            if final_a is None or final_b is None:
                continue
            d = paired_item_difference(final_a, final_b)
            verdict = "significant" if d.significant else "not significant"
            contrasts.append([f"{a} − {b}", label, measure.split("/")[1],
                              interval(runs_a[0][0].retention[measure], d), verdict])  # fmt: skip
    if contrasts:
        print()
        print(markdown_table(["pair", "seeds", "measure", "difference after the last task [95 %]", "verdict"], contrasts))


if __name__ == "__main__":
    main()
