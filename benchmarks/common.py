"""Helpers shared by the performance benchmarks: environment record, JSON output, markdown tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Versions and machine facts, so that a result can be compared with another run (or not)."""
    import peft
    import torch
    import transformers

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": os.getloadavg(),
    }


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3); with fewer than two values all three are the value itself."""
    if len(values) < 2:
        return (values[0],) * 3
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_rounds(jobs: dict, calls: dict, rounds: int, warmup: int, seed: int) -> tuple[dict, dict]:
    """Per-call (wall, CPU) seconds of every job, one run per round in a freshly shuffled order."""
    for fn in jobs.values():
        for _ in range(warmup):
            fn()
    wall, cpu = {name: [] for name in jobs}, {name: [] for name in jobs}
    order, rng = list(jobs), random.Random(seed)
    for round_ in range(rounds):
        rng.shuffle(order)
        for name in order:
            w, c = timed(jobs[name])
            wall[name].append(w / calls.get(name, 1))
            cpu[name].append(c / calls.get(name, 1))
        print(f"round {round_ + 1}/{rounds} (CPU s): " + ", ".join(f"{n} {cpu[n][-1]:.3f}" for n in jobs), flush=True)
    return wall, cpu
