"""Which later task adapter moved an earlier task's answers, and how strongly it acts on that task's inputs.

A task-adapter method (IncLoRA, O-LoRA, N-LoRA) ends with the model base + sum_t dW_t, one frozen LoRA per task.
This trains one order with the benchmark's config (generation scoring only and no next-task evaluations: the
training and the final row are the main run's, since training and greedy decoding are deterministic at a seed),
then measures, for every earlier task i and every later task t:

* **ablation**: task i scored again with adapter t switched off. The gain, paired over i's test examples with a
  95 % bootstrap interval, is how much of i's forgetting t's adapter causes on its own;
* **functional overlap**: on i's test prompts, ||dW_t x|| / ||dW_i x|| at every LoRA module (x: the module's
  inputs at the prompt's real tokens, all adapters active), averaged over modules. The collision rate compares the
  updates' entries; this compares what the updates do to the activations the earlier task produces, which is what
  moves its answers.

    python benchmarks/interference.py --method nlora --order 1 --seed 0 --model-cache /work/cache/smollm2

Writes ``results/interference/<method>_order<k>_seed<s>.json`` and prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

import accuracy
from common import environment, markdown_table
from peft_continual.adapters import adapters_active, lora_layers
from peft_continual.demo_model import load_smollm2
from peft_continual.io_utils import atomic_write_text
from peft_continual.methods import task_adapter_name
from peft_continual.statistics import RunScores, paired_comparison
from peft_continual.tasks import encode_eval
from peft_continual.tasks.encoding import left_pad

TASK_ADAPTER_METHODS = ["inclora", "olora", "nlora"]
# scoring as the main runs' primary protocol; the next-task evaluations are not needed here
OVERRIDES = ["trainer.evaluation_method=generate", "trainer.evaluate_unseen=false"]


@torch.no_grad()
def output_norms(model, tokenizer, task, adapters: list[str], config: dict) -> np.ndarray:
    """Squared norms of every adapter's output, summed over task's prompt tokens: array [module, adapter]."""
    layers = [layer for _, layer in lora_layers(model)]
    sums = np.zeros((len(layers), len(adapters)))
    mask = {}

    def hook(index):
        def record(module, args):
            x = args[0][mask["tokens"]]  # real tokens only (prompts are left-padded)
            for k, name in enumerate(adapters):
                y = module.lora_B[name](module.lora_A[name](x)) * module.scaling[name]
                sums[index, k] += float(y.pow(2).sum())

        return record

    options, batch = config["trainer"], config["training"]["per_device_eval_batch_size"]
    prompts = encode_eval(tokenizer, task, options["max_source_length"]).prompts
    handles = [layer.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with adapters_active(model, adapters):
            for start in range(0, len(prompts), batch):
                ids, attention = left_pad(prompts[start:start + batch], tokenizer.pad_token_id)
                mask["tokens"] = attention.bool()
                model(input_ids=ids, attention_mask=attention)
    finally:
        for handle in handles:
            handle.remove()
    return sums


def generate_scores(model, tokenizer, task, config: dict, active: list[str]) -> np.ndarray:
    with adapters_active(model, active):
        evaluation = accuracy.evaluate_all(model, tokenizer, [task], config, only=["generate"])["generate"][0]
    return np.asarray(evaluation.example_scores, dtype=float)


def gain(without: np.ndarray, with_all: np.ndarray) -> dict:
    """Score without the adapter minus with every adapter, paired over the same test examples (points)."""
    difference = paired_comparison([RunScores(((without,),))], [RunScores(((with_all,),))])["average_accuracy"]
    return {"delta": 100 * difference.estimate, "low": 100 * difference.low, "high": 100 * difference.high}


def train(config: dict, model, tokenizer, tasks, run_dir: Path, seed: int):
    """Train the order in ``run_dir`` (resumable) as the benchmark does: (the PeftModel, the result's dict)."""
    with accuracy.claim(run_dir):
        trainer = accuracy.continual_trainer(config, model, tokenizer, str(run_dir), seed, save_steps=50)
        result = trainer.train_continual(tasks, resume_from_checkpoint=True)
    return trainer.model, result.to_dict()


def ablate(model, tokenizer, tasks, result: dict, config: dict) -> list[dict]:
    """Every (earlier task i, later adapter t): i's score without t, the paired gain, and t's output overlap."""
    model.eval()
    adapters = [task_adapter_name(i, task.name) for i, task in enumerate(tasks)]
    last, report = len(tasks) - 1, []
    for i, task in enumerate(tasks[:-1]):
        with_all = np.asarray(result["example_scores"][last][i], dtype=float)
        norms = np.sqrt(output_norms(model, tokenizer, task, adapters, config))  # [module, adapter]
        for t in range(i + 1, len(tasks)):
            without = generate_scores(model, tokenizer, task, config, [a for a in adapters if a != adapters[t]])
            overlap = norms[:, t] / norms[:, i]
            report.append({"task": task.name, "learned": 100 * result["accuracy_matrix"][i][i], "final": 100 * with_all.mean(),
                           "adapter_off": tasks[t].name, "without_adapter": 100 * without.mean(),
                           "gain": gain(without, with_all), "overlap_mean": float(overlap.mean()),
                           "overlap_median": float(np.median(overlap)), "overlap_max": float(overlap.max())})  # fmt: skip
            print(f"{task.name} without {tasks[t].name}: {report[-1]['without_adapter']:.1f} "
                  f"(all adapters {report[-1]['final']:.1f})", flush=True)  # fmt: skip
    return report


def table(report: list[dict]) -> str:
    rows = [[e["task"], f"{e['learned']:.1f}", f"{e['final']:.1f}", e["adapter_off"], f"{e['without_adapter']:.1f}",
             f"{e['gain']['delta']:+.1f} [{e['gain']['low']:+.1f}, {e['gain']['high']:+.1f}]",
             f"{e['overlap_mean']:.2f} ({e['overlap_median']:.2f}, {e['overlap_max']:.2f})"] for e in report]  # fmt: skip
    return markdown_table(["task i", "learned R[i][i]", "final (all adapters)", "adapter t off", "final without t",
                           "gain [95 %]", "‖ΔW_t x‖ / ‖ΔW_i x‖: mean (median, max) over modules"], rows)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=TASK_ADAPTER_METHODS)
    parser.add_argument("--order", type=int, default=1, choices=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--model-cache", default=None, help="the converted SmolLM2 checkpoint's folder")
    parser.add_argument("--output", default=None, help="default: results/interference/<method>_order<k>_seed<s>.json")
    args = parser.parse_args()

    overrides = OVERRIDES + args.overrides
    config = accuracy.load_experiment(args.method, overrides)
    name = f"{args.method}_order{args.order}_seed{args.seed}"
    output = Path(args.output or accuracy.RESULTS / "interference" / f"{name}.json")
    run_dir = accuracy.RUNS / f"interference_{name}-{accuracy.config_hash(args.method, args.order, args.seed, config)}"
    torch.set_num_threads(config["threads"])
    set_seed(args.seed)
    tasks = accuracy.load_tasks(config, args.order, args.seed)
    model, tokenizer = load_smollm2(cache_dir=args.model_cache)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, result = train(config, model, tokenizer, tasks, run_dir, args.seed)
    report = ablate(model, tokenizer, tasks, result, config)
    payload = {"method": args.method, "order": args.order, "seed": args.seed, "overrides": overrides, "config": config,
               "result": result, "ablations": report, "environment": environment()}  # fmt: skip
    atomic_write_text(output, json.dumps(payload, indent=2) + "\n")
    shutil.rmtree(run_dir, ignore_errors=True)
    print(table(report))
    print(f"-> {output}")


if __name__ == "__main__":
    main()
