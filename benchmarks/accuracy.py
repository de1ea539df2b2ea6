"""Accuracy benchmark: one continual-learning method on one standard task order, at CPU scale.

The experiment is ``experiments/default.json`` (scale, training, LoRA) merged with ``experiments/<method>.json``
(the method's hyper-parameters and any override); ``--set a.b=value`` changes one key of the merged config.
SmolLM2-135M-Instruct runs offline on the CPU in fp32. The result (accuracy matrix, AA, BWT, FWT, forgetting,
per-task details, collision report for task-adapter methods), the config, versions, hardware and wall time go to
``results/accuracy/<method>_order<k>_seed<s>.json``; a run with ``--set`` goes to ``results/sweeps/`` instead,
so that an override never replaces a main result.

    python benchmarks/accuracy.py --method nlora --order 1 --seed 0
    python benchmarks/accuracy.py --method nlora --order 1 --seed 0 --set method.collision_lambda=50

Methods: the ContinualTrainer ones (seqlora = plain LoraConfig, inclora, olora, nlora, replay, ilora); ``mtl``, the
multi-task upper bound (all training sets concatenated, one plain LoRA trained once, one row of accuracies); and
``osf``, peft's OSFConfig run as its docs prescribe for a sequence (re-wrap per task with a growing preserved
rank, a fresh Trainer per task), scored with the same ``evaluate_task``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import tempfile
import time
from pathlib import Path

import datasets
import torch
from peft import LoraConfig, OSFConfig, get_peft_model
from transformers import Trainer, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

from common import environment
from peft_continual import STANDARD_ORDERS, ContinualResult, ContinualTrainer, evaluate_task, load_continual_tasks
from peft_continual.configs import CONTINUAL_CONFIG_CLASSES
from peft_continual.demo_model import load_smollm2
from peft_continual.tasks import ContinualCollator, tokenize_task
from peft_continual.trainer import tasks_to_evaluate

HERE = Path(__file__).resolve().parent
EXPERIMENTS, RESULTS = HERE / "experiments", HERE / "results"
METHODS = ["seqlora", "inclora", "olora", "nlora", "replay", "ilora", "mtl", "osf"]


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if nested else value
    return merged


def load_experiment(method: str, overrides: list[str]) -> dict:
    """default.json + <method>.json + ``--set`` overrides (values parsed as JSON, else kept as strings)."""
    config = deep_merge(json.loads((EXPERIMENTS / "default.json").read_text()),
                        json.loads((EXPERIMENTS / f"{method}.json").read_text()))  # fmt: skip
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def training_args(config: dict, output_dir: str, seed: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir, seed=seed, use_cpu=True, save_strategy="no", report_to="none", disable_tqdm=True,
        **config["training"],
    )  # fmt: skip


@torch.no_grad()
def evaluate_all(model, tokenizer, tasks, config: dict) -> list[float]:
    """Accuracy on every task, scored exactly as ContinualTrainer scores (for the runners outside it)."""
    was_training = model.training
    model.eval()
    options = config["trainer"]
    scores = [
        evaluate_task(model, tokenizer, task, method=options["evaluation_method"],
                      max_source_length=options["max_source_length"],
                      batch_size=config["training"]["per_device_eval_batch_size"]).accuracy
        for task in tasks
    ]  # fmt: skip
    model.train(was_training)
    return scores


def zero_shot(config: dict, model, tokenizer, tasks, order: int, seed: int) -> list[float]:
    """The base model's accuracy per task: the same for every method at one order, seed and scale, so cached.

    Evaluation dominates a run at this scale; sharing R0 saves one round of it per method.
    """
    key = json.dumps([order, seed, config["data"], config["trainer"]["evaluation_method"],
                      config["trainer"]["max_source_length"]], sort_keys=True)  # fmt: skip
    path = RESULTS / "zero_shot" / f"order{order}_seed{seed}_{hashlib.sha1(key.encode()).hexdigest()[:8]}.json"
    if path.exists():
        return json.loads(path.read_text())["zero_shot"]
    scores = evaluate_all(model, tokenizer, tasks, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "tasks": [t.name for t in tasks], "zero_shot": scores}, indent=2) + "\n")
    return scores


def run_continual(config: dict, model, tokenizer, tasks, output_dir: str, seed: int, r0) -> ContinualResult:
    """The ContinualTrainer methods: the PEFT config class carries the method."""
    config_class = CONTINUAL_CONFIG_CLASSES[config["config_class"]]
    peft_config = config_class(task_type="CAUSAL_LM", **config["lora"], **config["method"])
    options = {k: v for k, v in config["trainer"].items() if k != "evaluate_zero_shot"}
    trainer = ContinualTrainer(
        model=get_peft_model(model, peft_config), args=training_args(config, output_dir, seed),
        processing_class=tokenizer, evaluate_zero_shot=False, **options,
    )  # fmt: skip
    trainer.result.zero_shot = r0  # the cached base-model scores (what evaluate_zero_shot=True would measure)
    return trainer.train_continual(tasks)


def run_mtl(config: dict, model, tokenizer, tasks, output_dir: str, seed: int, r0) -> ContinualResult:
    """Upper bound: each task's examples keep their own prompt; the union is shuffled and trained once."""
    length = config["trainer"]["max_source_length"]
    features = datasets.concatenate_datasets([tokenize_task(tokenizer, t, length) for t in tasks])
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **config["lora"], **config["method"]))
    started = time.perf_counter()
    output = Trainer(model=model, args=training_args(config, output_dir, seed), train_dataset=features,
                     data_collator=ContinualCollator(tokenizer.pad_token_id)).train()  # fmt: skip
    seconds = round(time.perf_counter() - started, 2)
    row = evaluate_all(model, tokenizer, tasks, config)
    details = [{"task": "+".join(t.name for t in tasks), "train_examples": len(features), "steps": output.global_step,
                "train_loss": output.training_loss, "train_seconds": seconds}]  # fmt: skip
    return ContinualResult(task_names=[t.name for t in tasks], accuracy_matrix=[row], method="mtl",
                           evaluation_method=config["trainer"]["evaluation_method"], details=details)  # fmt: skip


def run_osf(config: dict, model, tokenizer, tasks, output_dir: str, seed: int, r0) -> ContinualResult:
    """peft's OSF recipe for a sequence: wrap, train with a fresh Trainer, merge, re-wrap with a larger preserved rank.

    peft's docs unwrap with ``model.unload()``; in peft 0.21 OSF adds its update in the forward instead of writing
    it into the weights, so ``unload()`` would silently drop every task's training. ``merge_and_unload()`` keeps it.
    """
    options, osf = config["trainer"], config["osf"]
    ranks = osf["effective_rank"]
    if len(ranks) != len(tasks):
        raise SystemExit(f"osf.effective_rank lists {len(ranks)} ranks for {len(tasks)} tasks")
    result = ContinualResult(task_names=[t.name for t in tasks], method="osf", zero_shot=r0,
                             evaluation_method=options["evaluation_method"])  # fmt: skip
    collator = ContinualCollator(tokenizer.pad_token_id)
    for i, task in enumerate(tasks):
        peft_model = get_peft_model(model, OSFConfig(task_type="CAUSAL_LM", target_modules=osf["target_modules"],
                                                     effective_rank=ranks[i]))  # fmt: skip
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        features = tokenize_task(tokenizer, task, options["max_source_length"])
        started = time.perf_counter()
        output = Trainer(model=peft_model, args=training_args(config, f"{output_dir}/task_{i + 1}", seed),
                         train_dataset=features, data_collator=collator).train()  # fmt: skip
        seconds = round(time.perf_counter() - started, 2)
        evaluated = tasks_to_evaluate(i, len(tasks), options["evaluate_unseen"])  # as ContinualTrainer does
        scores = evaluate_all(peft_model, tokenizer, [tasks[j] for j in evaluated], config)
        result.accuracy_matrix.append([dict(zip(evaluated, scores)).get(j) for j in range(len(tasks))])
        result.details.append({"task": task.name, "train_examples": len(features), "train_loss": output.training_loss,
                               "steps": output.global_step, "train_seconds": seconds, "effective_rank": ranks[i],
                               "trainable_parameters": trainable})  # fmt: skip
        seen = ", ".join(f"{tasks[j].name} {100 * s:.1f}%" for j, s in zip(evaluated, scores))
        print(f"    after {task.name}: {seen}", flush=True)
        model = peft_model.merge_and_unload()
    return result


RUNNERS = {"mtl": run_mtl, "osf": run_osf}


def result_path(method: str, order: int, seed: int, overrides: list[str]) -> Path:
    name = f"{method}_order{order}_seed{seed}"
    if not overrides:
        return RESULTS / "accuracy" / f"{name}.json"
    suffix = "__".join(re.sub(r"[^0-9A-Za-z_.=-]", "_", item) for item in overrides)
    return RESULTS / "sweeps" / f"{name}__{suffix}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--order", type=int, default=1, choices=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key of the merged config, e.g. method.collision_lambda=50")  # fmt: skip
    parser.add_argument("--model-cache", default=None,
                        help="converted SmolLM2 checkpoint folder (default: peft_continual's cache, converted once)")
    args = parser.parse_args()

    config = load_experiment(args.method, args.overrides)
    torch.set_num_threads(config["threads"])
    hf_logging.set_verbosity_warning()
    set_seed(args.seed)
    started = time.perf_counter()
    data = config["data"]
    tasks = load_continual_tasks(STANDARD_ORDERS[args.order], HERE.parent / data["data_dir"],
                                 max_train_per_label=data["max_train_per_label"],
                                 max_eval_samples=data["max_eval_samples"], seed=args.seed)  # fmt: skip
    model, tokenizer = load_smollm2(cache_dir=args.model_cache)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    r0 = None  # no forward transfer for the joint (mtl) upper bound
    if config["trainer"]["evaluate_zero_shot"] and args.method != "mtl":
        r0 = zero_shot(config, model, tokenizer, tasks, args.order, args.seed)
    with tempfile.TemporaryDirectory() as output_dir:
        result = RUNNERS.get(args.method, run_continual)(config, model, tokenizer, tasks, output_dir, args.seed, r0)
    wall = time.perf_counter() - started

    payload = result.to_dict()
    if args.method == "mtl":  # one row: every task's accuracy after the single joint training
        payload["average_accuracy"] = sum(payload["accuracy_matrix"][0]) / len(tasks)
    payload.update(benchmark={"method": args.method, "order": args.order, "seed": args.seed,
                              "overrides": args.overrides, "config": config, "wall_seconds": round(wall, 1),
                              "environment": environment()})  # fmt: skip
    path = result_path(args.method, args.order, args.seed, args.overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"AA {100 * payload['average_accuracy']:.1f}%  wall {wall:.0f} s  -> {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
