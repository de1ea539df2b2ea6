"""A plan of accuracy runs: what is finished, what it will cost, and running the rest N at a time.

A plan is a JSON file; each entry expands to the product of its methods, orders and seeds, with its ``set``
overrides (as ``accuracy.py --set``) and an optional ``base`` experiment file (default ``default.json``):

    {"description": "issue 12, order 1 with three seeds",
     "runs": [{"methods": ["seqlora", "nlora"], "orders": [1], "seeds": [0, 1, 2]},
              {"method": "nlora", "order": 2, "seed": 0, "set": ["method.collision_lambda=50000"]}]}

A run is finished when its result JSON exists with the run's config hash (see ``accuracy.py``). Missing runs
go to ``accuracy.py`` as separate processes, ``--jobs`` at a time (one torch thread each, under ``nice``); an
interrupted run resumes where it stopped when the plan is run again.

The projection counts each run's optimizer steps and evaluated test examples from the data and the config, and
prices them with CPU seconds per step and per evaluated example: per method from finished results with the same
cost-relevant settings where there are some, otherwise from ``--measure`` (a short measurement of plain LoRA
steps and of both scoring protocols on this machine, saved to ``results/unit_costs.json``) scaled by the
method's step-time ratio in ``results/step_time*.json``. Its output is markdown, to paste into RESULTS.md.

    python benchmarks/plan.py PLAN.json --status
    python benchmarks/plan.py PLAN.json --measure --project
    python benchmarks/plan.py PLAN.json --jobs 2 --model-cache /work/cache/smollm2 [--hours 2.5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from accuracy import (
    DEFAULT_BASE,
    HERE,
    METHODS,
    RESULTS,
    RUNS,
    bases,
    config_hash,
    load_experiment,
    load_tasks,
    result_path,
    results_root,
    stored_hash,
)
from common import environment, markdown_table
from peft_continual.demo_model import load_smollm2
from peft_continual.io_utils import atomic_write_text

UNIT_COSTS = RESULTS / "unit_costs.json"
# accuracy.py method -> step_time.py variant whose step-time ratio to plain LoRA prices it (at the benchmark's T = 4);
# N-LoRA + ER is priced as ER (the replay batch doubles a step; the penalty adds about 2 %, task adapters 10 %)
STEP_VARIANTS = {"seqlora": "lora", "mtl": "lora", "inclora": "inclora@4", "olora": "olora@4", "nlora": "nlora-delta_w@4",
                 "replay": "er@2", "ilora": "ilora@2", "nlora_replay": "er@2", "osf": "osf@1"}  # fmt: skip
LOAD_SECONDS = 10.0  # process start, imports, model and data loading per run
RECENT_EVAL_RUNS = 3  # results that price an evaluated example (the newest, so that they price the current code)


@dataclass(frozen=True)
class Run:
    method: str
    order: int
    seed: int
    overrides: tuple[str, ...] = ()
    base: str = DEFAULT_BASE

    @cached_property
    def config(self) -> dict:
        return load_experiment(self.method, list(self.overrides), self.base)

    @property
    def path(self) -> Path:
        return result_path(self.method, self.order, self.seed, list(self.overrides), results_root(self.base, RESULTS))

    @property
    def name(self) -> str:
        """Its result's name, after its base experiment's when that is not the main one (logs, messages)."""
        return self.path.stem if self.base == DEFAULT_BASE else f"{Path(self.base).stem}_{self.path.stem}"

    @property
    def outputs(self) -> list[Path]:
        """What a finished run adds to its results folder: the result, its kept answers, the zero-shot cache."""
        root = self.path.parents[1]  # <results root>/{accuracy,sweeps}/<name>.json
        candidates = (self.path, root / "predictions" / f"{self.path.stem}.jsonl.gz", root / "zero_shot")
        return [p for p in candidates if p.exists()]

    @property
    def finished(self) -> bool:
        return stored_hash(self.path) == config_hash(self.method, self.order, self.seed, self.config)

    def command(self, model_cache: str | None) -> list[str]:
        command = [sys.executable, str(HERE / "accuracy.py"), "--method", self.method, "--order", str(self.order),
                   "--seed", str(self.seed)]  # fmt: skip
        if self.base != DEFAULT_BASE:
            command += ["--base", self.base]
        for item in self.overrides:
            command += ["--set", item]
        return command + (["--model-cache", model_cache] if model_cache else [])


def expand(plan: dict) -> list[Run]:
    """Every run of the plan, in plan order, without duplicates; bad entries are named."""
    if not isinstance(plan.get("runs"), list) or not plan["runs"]:
        raise SystemExit('a plan needs a non-empty "runs" list')
    runs = []
    for index, entry in enumerate(plan["runs"]):
        known = {"method", "methods", "order", "orders", "seed", "seeds", "set", "base"}
        if not isinstance(entry, dict) or set(entry) - known:
            raise SystemExit(f"plan entry {index}: expected keys among {sorted(known)}, got {entry!r}")

        def values(single, plural, check):
            chosen = entry[plural] if plural in entry else [entry[single]] if single in entry else None
            if not chosen or not all(check(v) for v in chosen):
                raise SystemExit(f"plan entry {index}: {single!r} or {plural!r} missing or invalid: {entry!r}")
            return chosen

        methods = values("method", "methods", lambda m: m in METHODS)
        orders = values("order", "orders", lambda o: o in (1, 2, 3))
        seeds = values("seed", "seeds", lambda s: isinstance(s, int) and s >= 0)
        base = entry.get("base", DEFAULT_BASE)
        if not (HERE / "experiments" / base).is_file():
            raise SystemExit(f"plan entry {index}: experiments/{base} does not exist")
        overrides = tuple(entry.get("set", ()))
        for method, order, seed in itertools.product(methods, orders, seeds):
            run = Run(method, order, seed, overrides, base)
            if run not in runs:
                runs.append(run)
    return runs


# ----------------------------------------------------------------------------------------------- the work


@lru_cache(maxsize=None)
def task_sizes(data: str, order: int, seed: int) -> tuple[tuple[int, int], ...]:
    """(train, eval) examples per task of the order, as the runner will load them."""
    tasks = load_tasks({"data": json.loads(data)}, order, seed)
    return tuple((len(t.train), len(t.eval)) for t in tasks)


def work(method: str, order: int, seed: int, config: dict) -> dict:
    """Optimizer steps and evaluated test examples of one run (zero-shot counted apart: it is cached and shared)."""
    from peft_continual.trainer import tasks_to_evaluate

    sizes = task_sizes(json.dumps(config["data"], sort_keys=True), order, seed)
    training = config["training"]
    per_step = training["per_device_train_batch_size"] * training.get("gradient_accumulation_steps", 1)
    epochs = training.get("num_train_epochs", 1)
    if method == "mtl":
        return {"steps": math.ceil(sum(n for n, _ in sizes) / per_step) * epochs,
                "eval_examples": sum(e for _, e in sizes), "zero_shot_examples": 0}  # fmt: skip
    T = len(sizes)
    options = config["trainer"]
    evaluated = sum(sizes[j][1] for i in range(T)
                    for j in tasks_to_evaluate(i, T, options["evaluate_unseen"], options.get("evaluate_seen", "needed")))  # fmt: skip
    zero = sum(e for _, e in sizes) if config["trainer"]["evaluate_zero_shot"] else 0
    return {"steps": sum(math.ceil(n / per_step) * epochs for n, _ in sizes), "eval_examples": evaluated,
            "zero_shot_examples": zero}  # fmt: skip


def protocol_key(config: dict) -> str:
    """The scoring protocols of a run, e.g. ``generate+rank``: an evaluated example costs one scoring by each."""
    methods = config["trainer"]["evaluation_method"]
    return methods if isinstance(methods, str) else "+".join(methods)


def cost_key(config: dict) -> str:
    """The settings that change the CPU cost of one step or one evaluated example."""
    training = config["training"]
    sequence = config["data"].get("sequence", "standard")  # another sequence: other prompts and answers
    return json.dumps({"batch": training["per_device_train_batch_size"], "length": config["trainer"]["max_source_length"],
                       "eval_batch": training["per_device_eval_batch_size"], "lora": config["lora"],
                       "threads": config["threads"], **({"sequence": sequence} if sequence != "standard" else {})},
                      sort_keys=True)  # fmt: skip


# ----------------------------------------------------------------------------------------------- unit costs


def costs_from_results() -> dict:
    """Seconds per step by (cost key, method) and per evaluated example by (cost key, protocol), from results.

    Evaluation seconds are a run's wall time less its training time, over the examples it evaluated, so they
    include the per-run loading too (an overestimate of a few percent). They come from the newest
    ``RECENT_EVAL_RUNS`` results of each (cost key, protocol) only, by the date each result records: scoring
    got faster as the code did (one prefill for both protocols), and older runs would price the old code.
    """
    steps, evals = defaultdict(lambda: [0.0, 0]), defaultdict(list)
    roots = sorted({results_root(base, RESULTS) for base in bases()})
    for path in [p for root in roots for folder in ("accuracy", "sweeps") for p in sorted(root.glob(f"{folder}/*.json"))]:
        data = json.loads(path.read_text())
        b = data.get("benchmark", {})
        if b.get("resumed") or "config" not in b:
            continue
        key, details = cost_key(b["config"]), data.get("details", [])
        train = sum(d.get("train_seconds", 0) for d in details)
        n_steps = sum(d.get("steps", 0) for d in details)
        if n_steps:
            steps[key, b["method"]][0] += train
            steps[key, b["method"]][1] += n_steps
        n_eval = sum(sum(d.get("eval_examples", [])) for d in details)
        if n_eval:
            date = b.get("environment", {}).get("date", "")
            evals[key, protocol_key(b["config"])].append((date, b["wall_seconds"] - train, n_eval))
    recent = {k: sorted(runs, key=lambda run: run[0])[-RECENT_EVAL_RUNS:] for k, runs in evals.items()}
    return {"step": {k: s / n for k, (s, n) in steps.items()},
            "eval": {k: sum(r[1] for r in runs) / sum(r[2] for r in runs) for k, runs in recent.items()}}  # fmt: skip


def step_ratios() -> dict[str, float]:
    """Each method's step-time ratio to plain LoRA (CPU time, SmolLM2), from ``results/step_time*.json``.

    ``step_time.json`` (the full table) wins; the narrower later measurements (e.g. ``step_time_task15.json``,
    which has OSF) only fill in variants it lacks.
    """
    table = {}
    for path in sorted(RESULTS.glob("step_time*.json"), key=lambda p: p.name != "step_time.json"):
        for variant, row in json.loads(path.read_text())["results"].get("cpu", {}).items():
            table.setdefault(variant, row["ratio"])
    table["lora"] = 1.0
    return {method: table[variant] for method, variant in STEP_VARIANTS.items() if variant in table}


def measure(config: dict, load_model, steps: int = 3, examples: int = 8) -> dict:
    """CPU seconds of one plain-LoRA optimizer step and of one evaluated example per protocol, on this machine.

    ``load_model`` returns (model, tokenizer); the steps run on order 1's first task, the evaluations spread
    ``examples`` over its four tasks.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from peft_continual import STANDARD_ORDERS, ContinualCollator, evaluate_task, load_continual_tasks
    from peft_continual.target_logits import supports_target_logits, with_target_logits
    from peft_continual.tasks import tokenize_task

    torch.set_num_threads(config["threads"])
    data, training, length = config["data"], config["training"], config["trainer"]["max_source_length"]
    tasks = load_continual_tasks(STANDARD_ORDERS[1], HERE.parent / data["data_dir"], max_train_per_label=8,
                                 max_eval_samples=examples // 4 or 1, seed=0)  # fmt: skip
    model, tokenizer = load_model()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **config["lora"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    features = tokenize_task(tokenizer, tasks[0], length).shuffle(seed=0)
    batch_size, collate = training["per_device_train_batch_size"], ContinualCollator(tokenizer.pad_token_id)
    times = []
    for i in range(steps + 1):  # the first step warms up
        batch = collate([features[(i * batch_size + k) % len(features)] for k in range(batch_size)])
        if supports_target_logits(model):  # as ContinualTrainer trains: the LM head on target positions only
            batch = with_target_logits(batch)
        started = time.process_time()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.process_time() - started)
    model.eval()
    per_example = {}
    for protocol in ("rank", "generate"):
        started, n = time.process_time(), 0
        with torch.no_grad():
            for task in tasks:
                n += evaluate_task(model, tokenizer, task, method=protocol, max_source_length=length, chat_template="off",
                                   batch_size=training["per_device_eval_batch_size"]).num_examples  # fmt: skip
        per_example[protocol] = (time.process_time() - started) / n
    return {"step_seconds": sum(times[1:]) / steps, "eval_seconds_per_example": per_example}


def unit_costs(runs: list[Run], model_cache: str | None, remeasure: bool) -> dict:
    """Measured unit costs by cost key: those saved before, re-measured for the plan's settings with ``remeasure``."""
    saved = json.loads(UNIT_COSTS.read_text()) if UNIT_COSTS.exists() else {"measured": {}}
    if remeasure:
        for key, config in {cost_key(r.config): r.config for r in runs}.items():
            print(f"measuring {key} ...", file=sys.stderr, flush=True)
            saved["measured"][key] = measure(config, lambda: load_smollm2(cache_dir=model_cache))
        saved["environment"] = environment()
        atomic_write_text(UNIT_COSTS, json.dumps(saved, indent=2) + "\n")
    return saved


def price(run: Run, amount: dict, observed: dict, measured: dict, ratios: dict) -> tuple[float, str] | None:
    """(CPU seconds, where the unit costs came from) of one run, or None when nothing prices it."""
    key, protocol = cost_key(run.config), protocol_key(run.config)
    base = measured.get(key)
    if (key, run.method) in observed["step"]:
        step, source = observed["step"][key, run.method], "results"
    elif base and run.method in ratios:
        step, source = base["step_seconds"] * ratios[run.method], "measured × step_time ratio"
    else:
        return None
    if (key, protocol) in observed["eval"]:
        per_example = observed["eval"][key, protocol]
    elif base:
        per_example = sum(base["eval_seconds_per_example"][p] for p in protocol.split("+"))
        source += ", eval measured"
    else:
        return None
    examples = amount["eval_examples"] + amount["zero_shot_examples"]
    return LOAD_SECONDS + amount["steps"] * step + examples * per_example, source


def priced_runs(runs: list[Run], costs: dict) -> list[tuple[Run, dict, tuple[float, str] | None]]:
    """(run, its work, its price or None) for every run; the zero-shot row is priced once per order and seed."""
    observed, ratios = costs_from_results(), step_ratios()
    out, seen_zero = [], set()
    for run in runs:
        amount = work(run.method, run.order, run.seed, run.config)
        test_set = {k: v for k, v in run.config["data"].items() if k != "max_train_per_label"}  # as the cache is keyed
        zero_key = (run.order, run.seed, json.dumps(test_set, sort_keys=True), cost_key(run.config), protocol_key(run.config))
        if zero_key in seen_zero:  # the base model's scores are cached and shared by the methods of one order/seed
            amount["zero_shot_examples"] = 0
        seen_zero.add(zero_key)
        out.append((run, amount, price(run, amount, observed, costs.get("measured", {}), ratios)))
    return out


def projection(runs: list[Run], costs: dict, jobs: int) -> str:
    rows, totals, unpriced = defaultdict(lambda: [0, 0, 0, 0, 0.0, 0.0, set()]), [0.0, 0.0], []
    for run, amount, priced in priced_runs(runs, costs):
        if priced is None:
            unpriced.append(run)
            continue
        seconds, source = priced
        row = rows[run.method]
        row[0] += 1
        row[1] += not run.finished
        row[2] += amount["steps"]
        row[3] += amount["eval_examples"] + amount["zero_shot_examples"]
        row[4] += seconds / 3600
        row[5] += 0 if run.finished else seconds / 3600
        row[6].add(source)
        totals[0] += seconds / 3600
        totals[1] += 0 if run.finished else seconds / 3600
    table = markdown_table(
        ["method", "runs", "missing", "train steps", "evaluated examples", "CPU h (plan)", "CPU h (missing)", "unit costs from"],
        [[m, r[0], r[1], r[2], r[3], f"{r[4]:.1f}", f"{r[5]:.1f}", "; ".join(sorted(r[6]))] for m, r in rows.items()],
    )  # fmt: skip
    lines = [table, "",
             f"Whole plan: **{totals[0]:.1f} CPU hours**; still to run: **{totals[1]:.1f} CPU hours**, about "
             f"{totals[1] / jobs:.1f} hours of wall time at {jobs} one-thread jobs side by side (if the machine gives "
             f"each job a core)."]  # fmt: skip
    if unpriced:
        lines.append(f"Not priced (no result with the same settings and no measurement: run with --measure): "
                     f"{', '.join(r.name for r in unpriced)}")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- running


def run_missing(runs: list[Run], jobs: int, model_cache: str | None, nice: int, commit: bool,
                deadline: float | None = None, seconds: dict[Run, float | None] | None = None) -> int:  # fmt: skip
    """Run the unfinished runs, ``jobs`` at a time; returns how many failed (their logs say why).

    With a ``deadline`` (a ``time.time()``), a run starts only if its projected ``seconds`` end before it (one job
    per core: CPU seconds = wall seconds); an unpriced one does not start. A later, cheaper run may still fit.
    """
    missing = [r for r in runs if not r.finished]
    print(f"{len(runs) - len(missing)} of {len(runs)} runs finished; running {len(missing)}, {jobs} at a time", flush=True)
    logs = RUNS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    queue, active, failed = list(missing), {}, 0
    while queue or active:
        while queue and len(active) < jobs:
            run = queue.pop(0)
            if deadline is not None:
                needed, left = (seconds or {}).get(run), deadline - time.time()
                if needed is None or needed > left:
                    why = "no projected cost" if needed is None else f"projected {needed / 60:.0f} min"
                    print(f"not started {run.name}: {why}, {max(left, 0) / 60:.0f} min left before the deadline", flush=True)
                    continue
            log = (logs / f"{run.name}.log").open("a")
            proc = subprocess.Popen(["nice", "-n", str(nice), *run.command(model_cache)], stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=HERE.parent)  # fmt: skip
            active[proc] = (run, log, time.time())
            print(f"started {run.name} (log: {log.name})", flush=True)
        time.sleep(2)
        for proc in [p for p in active if p.poll() is not None]:
            run, log, started = active.pop(proc)
            log.close()
            if proc.returncode == 0 and run.finished:
                print(f"finished {run.name} in {(time.time() - started) / 60:.1f} min", flush=True)
                if commit:
                    paths = [str(p) for p in run.outputs]
                    subprocess.run(["git", "add", *paths], cwd=HERE.parent, check=True)
                    subprocess.run(["git", "commit", "-q", "-m", f"benchmark result: {run.name}", "--", *paths],
                                   cwd=HERE.parent, check=True)  # fmt: skip
            else:
                failed += 1
                print(f"FAILED {run.name} (exit {proc.returncode}); see {log.name}", flush=True)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", type=Path)
    parser.add_argument("--status", action="store_true", help="list finished and missing runs, then stop")
    parser.add_argument("--project", action="store_true", help="print the CPU-hour projection (markdown), then stop")
    parser.add_argument("--measure", action="store_true", help="measure unit costs on this machine first")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one torch thread each)")
    parser.add_argument("--nice", type=int, default=5)
    parser.add_argument("--model-cache", default=None, help="converted SmolLM2 checkpoint folder")
    parser.add_argument("--commit", action="store_true", help="git-commit each result JSON as it arrives")
    parser.add_argument("--hours", type=float, default=None,
                        help="start only runs whose projected time ends within this many hours (e.g. what is left of "
                             "a session), so that none is cut off half-way; runs without a projected cost do not start")  # fmt: skip
    args = parser.parse_args()
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    plan = json.loads(args.plan.read_text())
    runs = expand(plan)
    if args.status:
        state = lambda r: "finished" if r.finished else "stale (other config)" if r.path.exists() else "missing"  # noqa: E731
        rows = [[r.path.stem, r.base, state(r)] for r in runs]
        print(markdown_table(["run", "base", "state"], rows))
        return
    if args.project or args.measure:
        costs = unit_costs(runs, args.model_cache, args.measure)
        print(f"#### Projection of `{args.plan.name}`" + (f": {plan['description']}" if plan.get("description") else ""))
        print(projection(runs, costs, args.jobs))
        return
    deadline, seconds = None, None
    if args.hours is not None:
        deadline = time.time() + 3600 * args.hours
        seconds = {run: priced and priced[0] for run, _, priced in priced_runs(runs, unit_costs(runs, None, False))}
    sys.exit(1 if run_missing(runs, args.jobs, args.model_cache, args.nice, args.commit, deadline, seconds) else 0)


if __name__ == "__main__":
    main()
