"""What one evaluation of the quick general suite (``--retention_tasks general``) costs, and where the time goes.

The trainer runs it on the base once and after every task, so its cost is fixed per evaluation while a task's
training grows with its data: on tiny tasks (the README demo's 10-35 optimizer steps) it is a large share of the
run. This times it as the trainer runs it, on SmolLM2-135M-Instruct under its chat template: the base's evaluation
(its answers, kept as the reference), then a tuned model's (a seeded random LoRA update on q/v), split into the
prompts' prefill, greedy generation (facts, and the leak check's short chat answers) and the chat part's drift
pass (the tuned model teacher-forced on the base's answers, and the base's distributions from its head).

    python benchmarks/retention_cost.py --threads 1 --repeats 2 --output retention_cost.json

Read the seconds as a ratio to a training step measured in the same conditions, not as absolutes (shared machine).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from peft import LoraConfig, get_peft_model

import peft_continual.general_ability as general_ability
from common import environment, markdown_table, write_json
from peft_continual.demo_model import load_smollm2
from peft_continual.retention import GENERAL_DEFAULT_ITEMS, GeneralRetention

PARTS = {"prefill": (general_ability.PromptBatch, "prefill"), "generate": (general_ability, "generate_batch"),
         "drift": (general_ability, "_chat_drift"), "reference": (general_ability, "_chat_reference")}  # fmt: skip


def timed_parts(seconds: dict[str, float]):
    """Wrap the suite's steps so that each call adds its wall time to ``seconds``."""
    for part, (owner, name) in PARTS.items():
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _part=part, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_part] += time.perf_counter() - started

        setattr(owner, name, staticmethod(wrapper) if isinstance(owner, type) else wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="tuned evaluations timed, after the base's")
    parser.add_argument("--output", default="retention_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2()
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    options = {"limit": GENERAL_DEFAULT_ITEMS, "chat_template": "on", "labels": ["positive", "negative", "spam"],
               "batch_size": general_ability.SHORT_PROMPT_BATCH, **GeneralRetention.QUICK}  # fmt: skip
    seconds: dict[str, float] = defaultdict(float)
    timed_parts(seconds)
    runs = []
    for kind in ["base"] + ["tuned"] * args.repeats:
        seconds.clear()
        started = time.perf_counter()
        if kind == "base":
            reference = general_ability.base_reference(model, tokenizer, **options)
            report = reference
        else:
            report = general_ability.evaluate_general_ability(model, tokenizer, reference=reference, **options)
        runs.append({"model": kind, "seconds": round(time.perf_counter() - started, 2),
                     "parts": {k: round(v, 2) for k, v in seconds.items()},
                     "summary": {k: round(v, 4) for k, v in report.summary().items()}})  # fmt: skip
        print(runs[-1], flush=True)
    path = write_json(args.output, {"environment": environment(), "threads": args.threads, "options": options, "runs": runs})
    print(markdown_table(["model", "seconds", *PARTS], [[r["model"], r["seconds"], *(r["parts"].get(p, 0) for p in PARTS)]
                                                       for r in runs]))  # fmt: skip
    print(f"written: {path}")


if __name__ == "__main__":
    main()
