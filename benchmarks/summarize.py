"""Tables and heatmaps from the benchmarks' result JSONs, written into ``benchmarks/RESULTS.md``.

Accuracy runs (per order and seed, averaged over orders, the issue's targets checked on the runs both methods
share; for every scoring protocol present, 95 % intervals by bootstrap over seeds and test examples and paired
comparisons between methods, from the per-example scores that newer results carry), the sweeps, the GPU profile
(``results/gpu/``) when it has been run, and the cost measurements (``step_time.json``, ``regularizer_memory.json``,
``inference.json``, rendered by their own scripts). Only the part of RESULTS.md between the ``GENERATED`` markers
is rewritten (the prose around it is kept); a missing RESULTS.md is created with a skeleton. Heatmaps of the
accuracy matrices go to ``results/accuracy/plots/``.

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
from peft_continual.statistics import MissingExampleScores, RunScores, bootstrap_metrics, paired_comparison  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
ACCURACY, SWEEPS, GPU = HERE / "results" / "accuracy", HERE / "results" / "sweeps", HERE / "results" / "gpu" / "accuracy"
GENERATION_SEQUENCE = HERE / "results" / "generation" / "accuracy"  # accuracy.py --base generation.json
INTERFERENCE = HERE / "results" / "interference"  # interference.py
PLOTS = ACCURACY / "plots"
BEGIN, END = "<!-- BEGIN GENERATED (benchmarks/summarize.py) -->", "<!-- END GENERATED -->"
METHOD_ORDER = ["seqlora", "inclora", "olora", "nlora", "replay", "ilora", "nlora_replay", "lwf", "osf", "osf_continual", "ssr", "ssr_ilora", "self_rehearsal", "mtl"]
# DESIGN.md section 4: T5-large average accuracy over orders 1-3 (Standard CL benchmark), from the O-LoRA/N-LoRA papers.
PUBLISHED_T5_LARGE = {"seqlora": 43.7, "inclora": 66.4, "olora": 75.8, "nlora": 78.8, "mtl": 80.0}
METRICS = ["average_accuracy", "backward_transfer", "forward_transfer", "forgetting"]
METRIC_NAMES = {"average_accuracy": "AA", "backward_transfer": "BWT", "forward_transfer": "FWT", "forgetting": "forgetting"}
PROTOCOL_NAMES = {"generate": "generation + normalised exact match", "rank": "label ranking"}
# Paired comparisons shown (A, B): the target chain and claims, N-LoRA against IncLoRA (the penalty alone:
# same task adapters), methods against OSF (the strongest that keeps no rows), every method against SeqLoRA, then
# N-LoRA + ER against each of its halves.
COMPARISONS = [("nlora", "olora"), ("olora", "inclora"), ("inclora", "seqlora"), ("nlora", "inclora"), ("ilora", "replay"),
               ("nlora", "osf"), ("olora", "osf"), ("ilora", "osf"), ("replay", "osf"), ("nlora", "replay"), ("olora", "seqlora"), ("nlora", "seqlora"),
               ("replay", "seqlora"), ("ilora", "seqlora"), ("osf", "seqlora"), ("mtl", "nlora"),
               ("nlora_replay", "nlora"), ("nlora_replay", "replay")]  # fmt: skip
NO_SCORES = "no interval: no per-example scores"
SELECTION = (1, 0)  # (order, seed) on which a sweep selects a value (RESULTS.md); other orders only check it
SKELETON = f"""# Benchmark results

{BEGIN}
{END}
"""


def load(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) | {"_file": p.name} for p in sorted(folder.glob("*.json"))]


def pct(values: list[float | None]) -> str:
    """Mean in %, with the spread (sample std) over seeds where there are several."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = f"{round(100 * statistics.mean(values), 1) + 0.0:.1f}"  # + 0.0: no "-0.0" from rounding
    return f"{mean} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else mean


def mean_offdiagonal(matrix: list[list]) -> float | None:
    values = [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i < j and v is not None]
    return statistics.mean(values) if values else None


def by_method_and_order(runs: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups = defaultdict(list)
    for run in runs:
        groups[run["benchmark"]["method"], run["benchmark"]["order"]].append(run)
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][1], rank.get(kv[0][0], 99))))


def main_table(groups, published: dict | None = PUBLISHED_T5_LARGE) -> str:
    """Per (method, order): mean ± std over seeds, with the papers' AA where ``published`` has one."""
    paper = ["paper AA (T5-large, orders 1–3)"] if published is not None else []
    header = ["method", "order", "seeds", "AA %", "BWT", "FWT", "forgetting", *paper, "wall s/run"]
    rows = []
    for (method, order), runs in groups.items():
        cells = [pct([r[key] for r in runs]) for key in METRICS]
        wall = statistics.mean(r["benchmark"]["wall_seconds"] for r in runs)
        seeds = ",".join(str(r["benchmark"]["seed"]) for r in runs)
        paper_cell = [published.get(method, "—")] if published is not None else []
        rows.append([method, order, seeds, *cells, *paper_cell, f"{wall:.0f}"])
    return markdown_table(header, rows)


def cell_mean(runs: list[dict], key: str) -> float | None:
    """Mean over orders of the per-order mean over seeds (each order weighs the same)."""
    per_order = defaultdict(list)
    for r in runs:
        if r.get(key) is not None:
            per_order[r["benchmark"]["order"]].append(r[key])
    return statistics.mean(statistics.mean(v) for v in per_order.values()) if per_order else None


def overall_table(runs: list[dict]) -> str:
    """Per method, averaged over the orders it was run on (seeds averaged within an order first)."""
    methods = defaultdict(list)
    for r in runs:
        methods[r["benchmark"]["method"]].append(r)
    rows = []
    for method in sorted(methods, key=lambda m: METHOD_ORDER.index(m)):
        group = methods[method]
        orders = sorted({r["benchmark"]["order"] for r in group})
        cells = [pct([cell_mean(group, key)]) for key in METRICS]
        rows.append([method, ",".join(map(str, orders)), len(group), *cells, PUBLISHED_T5_LARGE.get(method, "—")])
    return markdown_table(["method", "orders", "runs", "AA %", "BWT", "FWT", "forgetting",
                           "paper AA (T5-large, orders 1–3)"], rows)  # fmt: skip


def runs_by_place(runs: list[dict], method: str) -> dict[tuple[int, int], dict]:
    """The method's runs by (order, seed)."""
    return {(r["benchmark"]["order"], r["benchmark"]["seed"]): r for r in runs if r["benchmark"]["method"] == method}


def shared_runs(runs: list[dict], methods: list[str]) -> dict[str, list[dict]]:
    """Each method's runs restricted to the (order, seed) pairs that every one of ``methods`` has."""
    keys = {m: runs_by_place(runs, m) for m in methods}
    common = set.intersection(*(set(k) for k in keys.values())) if keys else set()
    return {m: [keys[m][k] for k in sorted(common)] for m in methods}


def collision_mean(runs: list[dict], eps: str) -> float | None:
    values = [mean_offdiagonal(r["collision"]["collision_rate"][eps]) for r in runs if r.get("collision")]
    return statistics.mean(values) if values else None


def targets_table(runs: list[dict], protocol: str = "generate") -> str:
    """The issue's targets, each on the runs its methods share, with the numbers behind the verdict.

    A comparative target is "met" only when every paired difference it names (same seeds and test examples, under
    ``protocol``) is significant in its direction; "not significant" when the estimates point its way but an
    interval includes 0; "MISSED" when an estimate points the other way.
    """
    rows = []

    def add(target, methods, values, met, fmt="{:.1f}", steps=()):
        shared = shared_runs(runs, methods)  # the values and every paired step read the same runs
        n, common = len(next(iter(shared.values()), [])), [r for rs in shared.values() for r in rs]
        shown = ", ".join(f"{m} " + ("n/a" if v is None else fmt.format(round(v, 1) + 0.0)) for m, v in zip(methods, values))
        diffs = [(a, b, (paired_differences(common, a, b, protocol)[1] or {}).get(metric)) for a, b, metric in steps]
        paired = "; ".join(f"{a} − {b} {interval(d)}" for a, b, d in diffs) or "—"
        if met and diffs and not all(d is not None and d.significant and d.estimate > 0 for _, _, d in diffs):
            verdict = "not significant" if all(d is not None for _, _, d in diffs) else "no interval"
        else:
            verdict = "n/a" if met is None else ("met" if met else "MISSED")
        rows.append([target, n, shown, paired, verdict])

    chain = ["nlora", "olora", "inclora", "seqlora"]
    shared = shared_runs(runs, chain)
    aa = [cell_mean(shared[m], "average_accuracy") for m in chain]
    ok = None if None in aa else all(a > b for a, b in zip(aa, aa[1:]))
    add("AA: N-LoRA > O-LoRA > IncLoRA > SeqLoRA (mean over orders)", chain, [None if a is None else 100 * a for a in aa], ok,
        steps=[(a, b, "average_accuracy") for a, b in zip(chain, chain[1:])])  # fmt: skip
    # candidates: our methods run wherever OSF ran (one not yet run there, e.g. a new composition, would shrink the
    # comparison to the runs it has)
    ours = [m for m in ("seqlora", "inclora", "olora", "nlora", "replay", "ilora", "nlora_replay")
            if runs_by_place(runs, "osf").keys() <= runs_by_place(runs, m).keys()]  # fmt: skip
    shared = shared_runs(runs, ours + ["osf"])
    aa = {m: cell_mean(shared[m], "average_accuracy") for m in ours + ["osf"]}
    if ours and None not in aa.values():
        best = max(ours, key=aa.get)
        add(f"our best method ({best}) ahead of OSF in AA", [best, "osf"], [100 * aa[best], 100 * aa["osf"]],
            aa[best] > aa["osf"], steps=[(best, "osf", "average_accuracy")])  # fmt: skip
    shared = shared_runs(runs, ["nlora", "olora"])
    for eps in ("0.01", "0.1"):
        n, o = collision_mean(shared["nlora"], eps), collision_mean(shared["olora"], eps)
        ratio = o / n if n and o is not None else None
        add(f"collision rate (ε = {eps}): N-LoRA ≥ 10× below O-LoRA (ratio {'n/a' if ratio is None else f'{ratio:.2f}×'})",
            ["nlora", "olora"], [None if n is None else 100 * n, None if o is None else 100 * o],
            None if ratio is None else ratio >= 10, "{:.1f} %")  # fmt: skip
    shared = shared_runs(runs, ["ilora", "replay"])
    bwt = [cell_mean(shared[m], "backward_transfer") for m in ("ilora", "replay")]
    add("BWT: I-LoRA better than ER", ["ilora", "replay"], [None if b is None else 100 * b for b in bwt],
        None if None in bwt else bwt[0] > bwt[1], "{:+.1f}", steps=[("ilora", "replay", "backward_transfer")])  # fmt: skip
    return markdown_table(["target", "shared runs", "values", f"paired Δ [95 %] ({protocol})", "verdict"], rows)


def protocols(runs: list[dict]) -> list[str]:
    """Scoring protocols present: each run's primary one and those under ``secondary``; generation first."""
    found = {r["evaluation_method"] for r in runs} | {p for r in runs for p in (r.get("secondary") or {})}
    return sorted(found, key=lambda p: (p != "generate", p))


def run_scores(run: dict, protocol: str) -> RunScores | None:
    """The run's per-example scores under ``protocol``; None when it was not scored that way or kept no scores."""
    try:
        return RunScores.from_result(run, None if run["evaluation_method"] == protocol else protocol)
    except MissingExampleScores:
        return None


def scored(run: dict, protocol: str) -> bool:
    return run["evaluation_method"] == protocol or protocol in (run.get("secondary") or {})


def interval(value, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(100 * value.estimate)} [{f.format(100 * value.low)}, {f.format(100 * value.high)}]"


def strata(runs: list[dict], protocol: str) -> dict[int, list[tuple[int, RunScores | None]]]:
    """(seed, scores) per order, seeds sorted."""
    out = defaultdict(list)
    for r in sorted(runs, key=lambda r: (r["benchmark"]["order"], r["benchmark"]["seed"])):
        out[r["benchmark"]["order"]].append((r["benchmark"]["seed"], run_scores(r, protocol)))
    return dict(sorted(out.items()))


def interval_table(runs: list[dict], protocol: str) -> str:
    """Per method: each order and all orders (equal weight), estimate [95 % interval] in points."""
    methods = defaultdict(list)
    for r in runs:
        if scored(r, protocol):
            methods[r["benchmark"]["method"]].append(r)
    rows = []
    for method in sorted(methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
        by_order = strata(methods[method], protocol)
        groups = [([o], by_order[o]) for o in by_order] + ([(list(by_order), None)] if len(by_order) > 1 else [])
        for orders, members in groups:
            members = members or [m for o in orders for m in by_order[o]]
            seeds = ",".join(str(seed) for seed, _ in members) if len(orders) == 1 else f"{len(members)} runs"
            if any(scores is None for _, scores in members):
                rows.append([method, ",".join(map(str, orders)), seeds, NO_SCORES, "", "", ""])
                continue
            result = bootstrap_metrics([[scores for _, scores in by_order[o]] for o in orders])
            one_seed = " †" if any(len(by_order[o]) == 1 for o in orders) else ""
            rows.append([method, ",".join(map(str, orders)) + one_seed, seeds,
                         *(interval(result[m], signed=m != "average_accuracy") for m in METRICS)])  # fmt: skip
    return markdown_table(["method", "order(s)", "seeds", "AA %", "BWT", "FWT", "forgetting"], rows)


def final_row(run: dict) -> dict:
    """The run as its last row alone, under every protocol: what the joint bound's single row is compared with."""
    def trim(scored: dict) -> dict:
        return {**scored, "accuracy_matrix": scored["accuracy_matrix"][-1:], "example_scores": scored["example_scores"][-1:]}

    return {**trim(run), "secondary": {p: trim(s) for p, s in (run.get("secondary") or {}).items()}}


def paired_differences(runs: list[dict], a: str, b: str, protocol: str) -> tuple[list, dict | None]:
    """(the (order, seed) runs A and B share, A − B per metric or None when a run lacks per-example scores)."""
    index = {(r["benchmark"]["method"], r["benchmark"]["order"], r["benchmark"]["seed"]): r for r in runs
             if scored(r, protocol)}  # fmt: skip
    shared = sorted({(o, s) for m, o, s in index if m == a} & {(o, s) for m, o, s in index if m == b})
    if not shared:
        return shared, None
    orders = sorted({o for o, _ in shared})

    def scores(method, order, seed, other):  # against a one-row run (the joint MTL bound): the final row only
        run, rows = index[method, order, seed], len(index[other, order, seed]["accuracy_matrix"])
        return run_scores(final_row(run) if rows == 1 < len(run["accuracy_matrix"]) else run, protocol)

    pairs = [[(scores(a, o, s, b), scores(b, o, s, a)) for oo, s in shared if oo == o] for o in orders]
    if any(x is None or y is None for stratum in pairs for x, y in stratum):
        return shared, None
    return shared, paired_comparison([[x for x, _ in st] for st in pairs], [[y for _, y in st] for st in pairs])


def paired_table(runs: list[dict], protocol: str) -> str:
    """A − B on the (order, seed) runs both have, all their orders weighing the same; * marks a significant one."""
    rows = []
    for a, b in COMPARISONS:
        shared, diff = paired_differences(runs, a, b, protocol)
        if not shared:
            continue
        orders = sorted({o for o, _ in shared})
        label = f"{a} − {b}"
        where = f"order{'s' * (len(orders) > 1)} {','.join(map(str, orders))}, {len(shared)} seed-run{'s' * (len(shared) > 1)}"
        if diff is None:
            rows.append([label, where, NO_SCORES, "", "", "", ""])
            continue
        cells = ["n/a" if d is None else f"{interval(d)}{' *' if d.significant else ''} (p {d.p_value:.3f})"
                 for d in (diff[m] for m in METRICS)]  # fmt: skip
        aa = diff["average_accuracy"]
        verdict = (f"{a if aa.estimate > 0 else b} higher AA" if aa.significant else "no significant AA difference")
        rows.append([label, where, *cells, verdict])
    if not rows:
        return "No pair of compared methods shares a seed yet."
    return markdown_table(["A − B", "runs paired", "ΔAA", "ΔBWT", "ΔFWT", "Δforgetting", "verdict (AA)"], rows)


def statistics_sections(runs: list[dict], names: dict[str, str] = PROTOCOL_NAMES) -> list[str]:
    parts = []
    for protocol in protocols(runs):
        name = names.get(protocol, protocol)
        if not any(run_scores(r, protocol) for r in runs if scored(r, protocol)):
            parts.append(f"### Intervals and paired comparisons, {name}\n\nNo interval: none of these results carries "
                         "per-example scores (they were written before results recorded them).")  # fmt: skip
            continue
        parts += [f"### Intervals, {name} (estimate [95 % interval], points; bootstrap over seeds, then test examples)",
                  interval_table(runs, protocol),
                  "† one seed in an order: that order's interval covers its test examples only, not seed-to-seed "
                  "variation.",
                  f"### Paired comparisons, {name} (same seeds, same test examples; * = interval excludes 0)",
                  paired_table(runs, protocol)]  # fmt: skip
    return parts


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


def training_key(config: dict) -> str:
    """What fixes a run's training and its test examples: its config less the method's values and the protocols."""
    rest = {k: v for k, v in config.items() if k not in ("method", "description")}
    rest["trainer"] = {k: v for k, v in rest.get("trainer", {}).items() if k != "evaluation_method"}
    return json.dumps(rest, sort_keys=True)


def default_run(sweep: dict, runs: list[dict]) -> dict | None:
    """The main run a sweep point varies: same method, order, seed, training and test set."""
    def key(run):
        b = run["benchmark"]
        return b["method"], b["order"], b["seed"], training_key(b["config"])

    return next((run for run in runs if key(run) == key(sweep)), None)


def learned(run: dict) -> float | None:
    """Mean of the diagonal R[i][i]: how well each task is learned when trained (plasticity)."""
    matrix = run["accuracy_matrix"]
    diagonal = [matrix[i][i] for i in range(min(len(matrix), len(matrix[0])))]
    return None if None in diagonal or len(matrix) == 1 else statistics.fmean(diagonal)


def versus_default(sweep: dict, default: dict | None, protocol: str) -> list[str]:
    """ΔAA and ΔBWT of a sweep point minus its default run, paired on the test examples (* = significant)."""
    pair = None if default is None else (run_scores(sweep, protocol), run_scores(default, protocol))
    if pair is None or None in pair:
        return ["—", "—"]
    diff = paired_comparison([[pair[0]]], [[pair[1]]])
    return ["n/a" if d is None else f"{interval(d)}{' *' if d.significant else ''}"
            for d in (diff["average_accuracy"], diff["backward_transfer"])]  # fmt: skip


def sweep_table(runs: list[dict], main_runs: list[dict] = ()) -> str:
    """One row per sweep point, showing every setting swept for that method (not only the row's own override).

    A point whose main run exists (same method, order, seed and training, only method values and protocols
    differing) is paired with it on the same test examples under the sweep's primary protocol; the main run
    itself is listed as the point ``(main run)`` (the experiment's value, the package default when it ran).
    """
    swept = defaultdict(dict)  # method -> ordered set of dotted keys
    for r in runs:
        for item in r["benchmark"]["overrides"]:
            swept[r["benchmark"]["method"]][item.partition("=")[0]] = None
    defaults = {id(r): default_run(r, main_runs) for r in runs}
    shown = list(runs) + list({id(d): d for d in defaults.values() if d is not None}.values())
    header = ["method", "order", "seed", "settings", "AA %", "BWT", "FWT", "forgetting", "learned (mean R[i][i])",
              "ΔAA vs main run", "ΔBWT vs main run", "collision ε=0.01 (%)", "collision ε=0.1 (%)", "wall s"]  # fmt: skip
    rows = []

    def setting(r, key):
        node = r["benchmark"]["config"]
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def sort_key(r):  # the selection order's points first, then each held-out order's
        b = r["benchmark"]
        values = [setting(r, k) for k in swept[b["method"]]]  # numbers by value; None (unset) first
        return b["method"], b["order"], b["seed"], [(v is not None, type(v).__name__, v if v is not None else 0) for v in values]

    for r in sorted(shown, key=sort_key):
        b = r["benchmark"]
        keys = [k for k in swept[b["method"]] if k != "trainer.evaluation_method"] or swept[b["method"]]
        settings = ", ".join(f"`{k.split('.')[-1]}={setting(r, k)}`" for k in keys)
        if id(r) not in defaults:
            settings += " (main run)"
        paired = versus_default(r, defaults.get(id(r)), r["evaluation_method"]) if id(r) in defaults else ["", ""]
        collisions = [pct([collision_mean([r], eps)]) if r.get("collision") else "—" for eps in ("0.01", "0.1")]
        rows.append([b["method"], b["order"], b["seed"], settings, *(pct([r[key]]) for key in METRICS),
                     pct([learned(r)]), *paired, *collisions, f"{b['wall_seconds']:.0f}"])  # fmt: skip
    return markdown_table(header, rows)


def lambda_points(runs: list[dict]) -> list[tuple[float, dict]]:
    """One (λ, run) per λ, by λ. A sweep point at the main run's own λ (a generation-only replica of it) gives way
    to the main run, which ``runs`` lists last."""
    by_value = {r["benchmark"]["config"]["method"]["collision_lambda"]: r for r in runs}
    return sorted(by_value.items(), key=lambda point: point[0])


def lambda_plot(runs: list[dict], path: Path) -> None:
    """N-LoRA's λ sweep (its main run included): accuracy, plasticity and collision rate against λ (log scale)."""
    points = lambda_points(runs)
    x = [p[0] for p in points]
    reductions = {r["benchmark"]["config"]["method"].get("collision_reduction", "mean") for _, r in points}
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(x, [100 * r["average_accuracy"] for _, r in points], "o-", color="tab:blue", label="AA %")
    ax.plot(x, [float("nan") if learned(r) is None else 100 * learned(r) for _, r in points], "o:", color="tab:green",
            label="learned (mean R[i][i]) %")  # fmt: skip
    for eps, style in (("0.01", "s--"), ("0.1", "^--")):
        ax.plot(x, [100 * collision_mean([r], eps) for _, r in points], style, color="tab:red",
                label=f"collision % (ε = {eps})")  # fmt: skip
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(x, [f"{v:g}" for v in x])  # the swept values themselves, not powers of ten
    ax.set_xlabel(f"collision_lambda (delta_w form, {' / '.join(sorted(reductions))} reduction)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"N-LoRA λ sweep (order {SELECTION[0]}, seed {SELECTION[1]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def generated_section(runs: list[dict], sweeps: list[dict]) -> str:
    groups = by_method_and_order(runs)
    PLOTS.mkdir(parents=True, exist_ok=True)
    parts = ["### Averaged over orders (per order, seeds first; metrics in accuracy points, macro over tasks)",
             overall_table(runs), "### The issue's targets", targets_table(runs),
             "### Per order (mean ± sample std over seeds)", main_table(groups), *statistics_sections(runs),
             "### Collision analysis of the task adapters (N-LoRA's metrics)",
             collision_table(groups), *interference_sections(), "### Accuracy matrices"]  # fmt: skip
    for run in sorted(runs, key=lambda r: (r["benchmark"]["order"], r["benchmark"]["seed"],
                                           METHOD_ORDER.index(r["benchmark"]["method"]))):  # fmt: skip
        png = PLOTS / run["_file"].replace(".json", ".png")
        heatmap(run, png)
        b = run["benchmark"]
        parts += [f"**{b['method']}**, order {b['order']}, seed {b['seed']} ([heatmap]({png.relative_to(HERE)}), "
                  f"[json](results/accuracy/{run['_file']}))", matrix_block(run)]  # fmt: skip
    if sweeps:
        parts += ["### Sweeps (one value per row, on order 1 to select and orders 2–3 to check; Δ = point − the main "
                  "run of the same order and seed, paired on its test examples, 95 % interval, * = excludes 0)",
                  sweep_table(sweeps, runs)]  # fmt: skip
        lambdas = [r for r in sweeps if r["benchmark"]["method"] == "nlora" and
                   (r["benchmark"]["order"], r["benchmark"]["seed"]) == SELECTION]  # fmt: skip
        lambdas += [d for d in {id(d): d for d in (default_run(r, runs) for r in lambdas) if d}.values()]
        if lambdas:
            lambda_plot(lambdas, PLOTS / "nlora_lambda_sweep.png")
            parts.append("![N-LoRA λ sweep](results/accuracy/plots/nlora_lambda_sweep.png)")
    gpu = load(GPU) if GPU.is_dir() else []
    if gpu:
        parts += ["## GPU profile (`python benchmarks/gpu_profile.py`; results in `results/gpu/`)",
                  overall_table(gpu), main_table(by_method_and_order(gpu)), *statistics_sections(gpu)]  # fmt: skip
    generation = load(GENERATION_SEQUENCE) if GENERATION_SEQUENCE.is_dir() else []
    if generation:
        parts += ["## Offline generation sequence (amazon-title → arithmetic → spelling; "
                  "`accuracy.py --base generation.json`, results in `results/generation/`)",
                  "Scores are each task's own metric (ROUGE-L, exact match, edit similarity), in points.",
                  main_table(by_method_and_order(generation), published=None),
                  *statistics_sections(generation, {"generate": "greedy generation, each task's metric"})]  # fmt: skip
        for run in sorted(generation, key=lambda r: (r["benchmark"]["seed"], METHOD_ORDER.index(r["benchmark"]["method"]))):
            b = run["benchmark"]
            parts += [f"**{b['method']}**, seed {b['seed']} ([json](results/generation/accuracy/{run['_file']}))",
                      matrix_block(run)]  # fmt: skip
    return "\n\n".join(parts + cost_sections())


def interference_sections() -> list[str]:
    """One table per ``interference.py`` result: which later adapter moved an earlier task's answers."""
    files = sorted(INTERFERENCE.glob("*.json")) if INTERFERENCE.is_dir() else []
    if not files:
        return []
    import interference

    parts = ["### Which later task adapter moved an earlier task (`python benchmarks/interference.py`; generation, "
             "each later adapter switched off in turn, gain paired over the earlier task's test examples)"]  # fmt: skip
    for path in files:
        data = json.loads(path.read_text())
        parts += [f"**{data['method']}**, order {data['order']}, seed {data['seed']} "
                  f"([json](results/interference/{path.name}))", interference.table(data["ablations"])]  # fmt: skip
    return parts


def cost_sections() -> list[str]:
    """The cost benchmarks' tables, rendered by their own scripts from the committed JSONs."""
    import argparse

    import inference
    import regularizer_memory
    import step_time

    parts, results = ["## Cost (generated from the JSONs in `results/`)"], HERE / "results"
    for path in sorted(results.glob("step_time*.json")):
        data = json.loads(path.read_text())
        only = " --only " + " ".join(data["settings"]["only"]) if data["settings"].get("only") else ""
        rounds = f" --rounds {data['settings']['rounds']}"
        parts += [f"### Step time (`python benchmarks/step_time.py{rounds}{only} --output {path.name}`, CPU-time ratios)",
                  step_time.render(data["results"]["cpu"]), environment_line(data)]  # fmt: skip
    if (results / "regularizer_memory.json").exists():
        data = json.loads((results / "regularizer_memory.json").read_text())
        settings = argparse.Namespace(**data["settings"])
        parts += ["### N-LoRA's penalty at 7B shapes (`python benchmarks/regularizer_memory.py`)",
                  regularizer_memory.render(data["results"], settings), environment_line(data)]  # fmt: skip
    if (results / "threads.json").exists():
        data = json.loads((results / "threads.json").read_text())
        parts += ["### Threads: two one-thread jobs side by side or one two-thread job (`python benchmarks/threads.py`)",
                  threads_table(data), environment_line(data)]  # fmt: skip
    if (results / "inference.json").exists():
        data = json.loads((results / "inference.json").read_text())
        parts += ["### Scoring and serving (`python benchmarks/inference.py`)", inference.render(data),
                  environment_line(data)]  # fmt: skip
    return parts


def threads_table(data: dict) -> str:
    """The same LoRA steps run (a) as one two-thread job twice in sequence, (b) as two one-thread jobs at once."""
    r, settings = data["results"], data["settings"]
    rows = []
    for label, phases in (("(a) one 2-thread job, twice in sequence", r["one_two_thread_job_twice"]),
                          ("(b) two 1-thread jobs side by side", [r["two_one_thread_jobs_side_by_side"]])):  # fmt: skip
        steps = sum(p["steps"] for p in phases)
        wall = sum(p["wall_seconds"] for p in phases)
        cpu = sum(sum(p["cpu_seconds"]) for p in phases)
        loads = ", ".join(f"{p['load_average_before'][0]:.1f}→{p['load_average_after'][0]:.1f}" for p in phases)
        rows.append([label, steps, f"{wall:.0f}", f"{3600 * steps / wall:.0f}", f"{cpu / steps:.1f}", loads])
    table = markdown_table(["layout", "steps", "wall s", "steps per hour", "CPU s per step", "1-min load (before→after)"],
                           rows)  # fmt: skip
    return (f"{table}\n\nThroughput (b)/(a): **{r['throughput_ratio_side_by_side_over_sequential']:.2f}×** "
            f"({settings['model']}, batch {settings['batch']} × {settings['length']} tokens).")


def environment_line(data: dict) -> str:
    env = data["environment"]
    return (f"<sub>{env['date']}, torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
            f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch thread(s)), load average "
            f"{', '.join(f'{x:.1f}' for x in env['load_average_1_5_15min'])}</sub>")


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
