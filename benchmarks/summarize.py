"""Tables and heatmaps from the accuracy benchmark's result JSONs, written into ``benchmarks/RESULTS.md``.

Only the part of RESULTS.md between the ``GENERATED`` markers is rewritten (the prose around it is kept); a
missing RESULTS.md is created with a skeleton. Heatmaps of the accuracy matrices go to ``results/accuracy/plots/``.

    python benchmarks/summarize.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
ACCURACY, SWEEPS = HERE / "results" / "accuracy", HERE / "results" / "sweeps"
PLOTS = ACCURACY / "plots"
BEGIN, END = "<!-- BEGIN GENERATED (benchmarks/summarize.py) -->", "<!-- END GENERATED -->"
METHOD_ORDER = ["seqlora", "inclora", "olora", "nlora", "replay", "ilora", "osf", "mtl"]
# DESIGN.md section 4: T5-large average accuracy over orders 1-3 (Standard CL benchmark), from the O-LoRA/N-LoRA papers.
PUBLISHED_T5_LARGE = {"seqlora": 43.7, "inclora": 66.4, "olora": 75.8, "nlora": 78.8, "mtl": 80.0}
METRICS = ["average_accuracy", "backward_transfer", "forward_transfer", "forgetting"]
SKELETON = f"""# Accuracy benchmark results

{BEGIN}
{END}

## Performance

Step time and memory of the methods: see [PERFORMANCE.md](PERFORMANCE.md).
"""


def load(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) | {"_file": p.name} for p in sorted(folder.glob("*.json"))]


def pct(values: list[float | None]) -> str:
    """Mean in %, with the spread (sample std) over seeds where there are several."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def mean_offdiagonal(matrix: list[list]) -> float | None:
    values = [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i < j and v is not None]
    return statistics.mean(values) if values else None


def by_method_and_order(runs: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups = defaultdict(list)
    for run in runs:
        groups[run["benchmark"]["method"], run["benchmark"]["order"]].append(run)
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][1], rank.get(kv[0][0], 99))))


def main_table(groups) -> str:
    header = ["method", "order", "seeds", "AA %", "BWT", "FWT", "forgetting", "paper AA (T5-large, orders 1–3)",
              "wall s/run"]  # fmt: skip
    rows = []
    for (method, order), runs in groups.items():
        cells = [pct([r[key] for r in runs]) for key in METRICS]
        wall = statistics.mean(r["benchmark"]["wall_seconds"] for r in runs)
        seeds = ",".join(str(r["benchmark"]["seed"]) for r in runs)
        rows.append([method, order, seeds, *cells, PUBLISHED_T5_LARGE.get(method, "—"), f"{wall:.0f}"])
    return markdown_table(header, rows)


def collision_table(groups) -> str:
    header = ["method", "order", "seeds", "collision ε=0.01 (%)", "collision ε=0.1 (%)",
              "overlap Σ_m abs(<ΔW_i, ΔW_j>)"]  # fmt: skip
    rows = []
    for (method, order), runs in groups.items():
        reports = [r["collision"] for r in runs if r.get("collision")]
        if not reports:
            continue
        rate = lambda eps: pct([mean_offdiagonal(c["collision_rate"][eps]) for c in reports])  # noqa: E731
        overlap = [mean_offdiagonal(c["overlap"]) for c in reports]
        spread = f" ± {statistics.stdev(overlap):.3g}" if len(overlap) > 1 else ""
        seeds = ",".join(str(r["benchmark"]["seed"]) for r in runs if r.get("collision"))
        rows.append([method, order, seeds, rate("0.01"), rate("0.1"), f"{statistics.mean(overlap):.3g}{spread}"])
    return markdown_table(header, rows)


def matrix_block(run: dict) -> str:
    """R[i][j] in %, zero-shot first, as a markdown table."""
    names = run["task_names"]
    rows = []
    if run.get("zero_shot"):
        rows.append(["zero-shot", *(f"{100 * a:.1f}" for a in run["zero_shot"])])
    labels = ["all (joint)"] if run["benchmark"]["method"] == "mtl" else [f"after {n}" for n in names]
    for label, row in zip(labels, run["accuracy_matrix"]):
        rows.append([label, *("–" if a is None else f"{100 * a:.1f}" for a in row)])
    return markdown_table(["R (%)", *names], rows)


def heatmap(run: dict, path: Path) -> None:
    names, matrix = run["task_names"], run["accuracy_matrix"]
    values = [[float("nan") if a is None else 100 * a for a in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 1.5, 0.6 * len(values) + 1.4))
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30)
    ax.set_yticks(range(len(values)), ["joint"] if len(values) == 1 else [f"after {n}" for n in names[: len(values)]])
    b = run["benchmark"]
    title = f"{b['method']} order {b['order']} seed {b['seed']}: AA {100 * run['average_accuracy']:.1f}%"
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def sweep_table(runs: list[dict]) -> str:
    header = ["method", "order", "seed", "override", "AA %", "BWT", "FWT", "forgetting", "collision ε=0.01 (%)",
              "wall s"]  # fmt: skip
    rows = []
    for r in runs:
        b = r["benchmark"]
        collision = pct([mean_offdiagonal(r["collision"]["collision_rate"]["0.01"])]) if r.get("collision") else "—"
        rows.append([b["method"], b["order"], b["seed"], " ".join(f"`{o}`" for o in b["overrides"]),
                     *(pct([r[key]]) for key in METRICS), collision, f"{b['wall_seconds']:.0f}"])  # fmt: skip
    return markdown_table(header, rows)


def generated_section(runs: list[dict], sweeps: list[dict]) -> str:
    groups = by_method_and_order(runs)
    PLOTS.mkdir(parents=True, exist_ok=True)
    parts = ["### Summary (mean ± sample std over seeds; metrics in accuracy points, macro over tasks)",
             main_table(groups), "### Collision analysis of the task adapters (N-LoRA's metrics)",
             collision_table(groups), "### Accuracy matrices"]  # fmt: skip
    for run in sorted(runs, key=lambda r: (r["benchmark"]["order"], r["benchmark"]["seed"],
                                           METHOD_ORDER.index(r["benchmark"]["method"]))):  # fmt: skip
        png = PLOTS / run["_file"].replace(".json", ".png")
        heatmap(run, png)
        b = run["benchmark"]
        parts += [f"**{b['method']}**, order {b['order']}, seed {b['seed']} ([heatmap]({png.relative_to(HERE)}), "
                  f"[json](results/accuracy/{run['_file']}))", matrix_block(run)]  # fmt: skip
    if sweeps:
        parts += ["### Sweeps (tiny: one order, one seed, one value per row)", sweep_table(sweeps)]
    return "\n\n".join(parts)


def main() -> None:
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else SKELETON
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{RESULTS_MD} lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    body = generated_section(load(ACCURACY), load(SWEEPS) if SWEEPS.is_dir() else [])
    RESULTS_MD.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    main()
