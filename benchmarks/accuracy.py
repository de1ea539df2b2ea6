"""Accuracy benchmark: one continual-learning method on one standard task order, at CPU scale.

The experiment is ``experiments/default.json`` (scale, training, LoRA) merged with ``experiments/<method>.json``
(the method's hyper-parameters and any override); ``--set a.b=value`` changes one key of the merged config.
SmolLM2-135M-Instruct runs offline on the CPU in fp32. The result (accuracy matrix, AA, BWT, FWT, forgetting,
per-task details, collision report for task-adapter methods), the config, versions, hardware and wall time go to
``results/accuracy/<method>_order<k>_seed<s>.json``; a run with ``--set`` goes to ``results/sweeps/`` instead,
so that an override never replaces a main result.

Runs accumulate across sessions. A run whose result JSON exists with the same config hash (method, order, seed
and the merged config) is skipped; one whose JSON holds another config is run again and replaces it. An
interrupted run resumes: it trains in ``runs/<result name>-<hash>/`` with Trainer checkpoints every
``--save-steps`` steps and ContinualTrainer's ``continual_progress`` after every task, so finished tasks are not
retrained and the interrupted task continues from its last checkpoint (``mtl`` resumes its single training;
``osf`` resumes at the task it was training, from the weights merged after the task before). The folder is
deleted once the result is written; results are written atomically.

    python benchmarks/accuracy.py --method nlora --order 1 --seed 0
    python benchmarks/accuracy.py --method nlora --order 1 --seed 0 --set method.collision_lambda=50

Methods: the ContinualTrainer ones (seqlora = plain LoraConfig, inclora, olora, nlora, replay, ilora, nlora_replay);
``mtl``, the multi-task upper bound (all training sets concatenated, one plain LoRA trained once, one row of
accuracies); and ``osf``, peft's OSFConfig run as its docs prescribe for a sequence (re-wrap per task with a growing
preserved rank, a fresh Trainer per task), scored with the same ``evaluate_protocols``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import gzip
import hashlib
import inspect
import json
import os
import re
import shutil
import time
from pathlib import Path

import datasets
import torch
from peft import LoraConfig, OSFConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from common import environment
from peft_continual import (
    GENERATION_ORDER,
    STANDARD_ORDERS,
    ContinualResult,
    ContinualTrainer,
    evaluate_protocols,
    load_continual_tasks,
)
from peft_continual.methods import config_classes
from peft_continual.demo_model import load_smollm2
from peft_continual.io_utils import atomic_directory, atomic_write_bytes, atomic_write_text
from peft_continual.evaluation import write_predictions
from peft_continual.tasks import (
    GENERATION,
    ContinualCollator,
    encode_eval,
    fit_max_new_tokens,
    tokenize_task,
    use_chat_template,
)
from peft_continual.trainer import PREDICTIONS_DIR, tasks_to_evaluate

HERE = Path(__file__).resolve().parent
EXPERIMENTS, RESULTS, RUNS = HERE / "experiments", HERE / "results", HERE / "runs"
MAX_SUFFIX = 200  # of a sweep result's file name (the overrides)
METHODS = ["seqlora", "inclora", "olora", "nlora", "replay", "ilora", "nlora_replay", "lwf", "mtl", "osf", "osf_continual", "ssr", "self_rehearsal"]
# data.sequence -> its task orders: the Standard CL benchmark, or the offline generation sequence (one order)
SEQUENCES = {"standard": STANDARD_ORDERS, "generation": {1: GENERATION_ORDER}}
DEFAULT_BASE = "default.json"
MAX_NEW_TOKENS = inspect.signature(ContinualTrainer.__init__).parameters["max_new_tokens"].default  # the trainer's cap


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if nested else value
    return merged


def load_experiment(method: str, overrides: list[str], base: str = DEFAULT_BASE) -> dict:
    """``base`` + <method>.json + ``--set`` overrides (values parsed as JSON, else kept as strings)."""
    config = deep_merge(json.loads((EXPERIMENTS / base).read_text()),
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


def config_hash(method: str, order: int, seed: int, config: dict) -> str:
    """What a result depends on (checkpointing, model path and the like are not part of it)."""
    key = json.dumps({"method": method, "order": order, "seed": seed, "config": config}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def stored_hash(path: Path) -> str | None:
    """The config hash of a result JSON, recomputed from what it stores (older results carry no hash field)."""
    try:
        b = json.loads(path.read_text())["benchmark"]
        return config_hash(b["method"], b["order"], b["seed"], b["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def bases() -> list[str]:
    """The base experiments: the files of experiments/ that are not a method's."""
    return sorted(p.name for p in EXPERIMENTS.glob("*.json") if p.stem not in METHODS)


def results_root(base: str, results: Path = RESULTS) -> Path:
    """Where a base experiment's results go: ``results/`` for the main one, ``results/<base stem>/`` for another
    sequence or scale, so that their runs never share a file name or a zero-shot cache."""
    return results if base == DEFAULT_BASE else results / Path(base).stem


def load_tasks(config: dict, order: int, seed: int):
    """The tasks of ``data.sequence`` (default: Standard CL) in ``order``, subsampled as the config says."""
    data = config["data"]
    sequence = data.get("sequence", "standard")
    if sequence not in SEQUENCES:
        raise SystemExit(f"data.sequence must be one of {sorted(SEQUENCES)}, got {sequence!r}")
    if order not in SEQUENCES[sequence]:
        raise SystemExit(f"the {sequence} sequence has orders {sorted(SEQUENCES[sequence])}, not {order}")
    return load_continual_tasks(SEQUENCES[sequence][order], HERE.parent / data["data_dir"],
                                max_train_per_label=data.get("max_train_per_label"),
                                max_train_samples=data.get("max_train_samples"),
                                max_eval_samples=data["max_eval_samples"], seed=seed)  # fmt: skip


def fit_generation_budgets(config: dict, tokenizer, tasks) -> None:
    """Each generation task's decoding budget, as ContinualTrainer sets it, for the runners outside it (zero-shot,
    MTL, OSF): the longest reference (at least 32 tokens), at most ``trainer.max_new_tokens``."""
    options = config["trainer"]
    chat = use_chat_template(tokenizer, options.get("chat_template", "off"))
    for task in tasks:
        if task.kind == GENERATION:
            features = tokenize_task(tokenizer, task, options["max_source_length"], chat)
            fit_max_new_tokens(tokenizer, task, features, options.get("max_new_tokens", MAX_NEW_TOKENS))


def training_args(config: dict, output_dir: str, seed: int, save_steps: int = 0) -> TrainingArguments:
    """``save_steps`` > 0 keeps the latest Trainer checkpoint every that many steps, so a task can resume."""
    saving = {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1} if save_steps else {"save_strategy": "no"}
    return TrainingArguments(
        output_dir=output_dir, seed=seed, use_cpu=config.get("device", "cpu") == "cpu", report_to="none",
        disable_tqdm=True, **saving, **config["training"],
    )  # fmt: skip


def autocast(model, config: dict):
    """bf16 autocast where the config trains in bf16 (as Trainer does), for the evaluations outside a Trainer."""
    if not config["training"].get("bf16"):
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def protocols(config: dict) -> list[str]:
    """The scoring protocols of a config, the primary first (``evaluation_method`` is a name or a list)."""
    methods = config["trainer"]["evaluation_method"]
    return [methods] if isinstance(methods, str) else list(methods)


def can_score(protocol: str, task) -> bool:
    return not (protocol == "rank" and task.kind == GENERATION)  # as ContinualTrainer: no options to rank


@torch.no_grad()
def evaluate_all(model, tokenizer, tasks, config: dict, only: list[str] | None = None,
                 predictions: Path | None = None) -> dict[str, list]:  # fmt: skip
    """Every task under every protocol of the config (or ``only`` those), scored exactly as ContinualTrainer
    scores, for the runners outside it: protocol -> one TaskEvaluation per task (None where it cannot score).

    With ``predictions`` (a stage folder), every answer goes to ``<predictions>/<task>.<protocol>.jsonl`` as
    ContinualTrainer writes them, so that :func:`keep_predictions` and ``diagnose.py`` read every method alike.
    """
    was_training = model.training
    model.eval()
    options = config["trainer"]
    chat = use_chat_template(tokenizer, options.get("chat_template", "off"))
    encodings = [encode_eval(tokenizer, task, options["max_source_length"], chat) for task in tasks]
    wanted = only or protocols(config)
    evaluations = {protocol: [] for protocol in wanted}
    with autocast(model, config):
        for task, encoding in zip(tasks, encodings):
            scorable = [protocol for protocol in wanted if can_score(protocol, task)]
            scored = evaluate_protocols(model, tokenizer, task, scorable, encoding=encoding,
                                        batch_size=config["training"]["per_device_eval_batch_size"])  # fmt: skip
            for protocol in wanted:
                evaluations[protocol].append(scored.get(protocol))
                if predictions is not None and protocol in scored:
                    write_predictions(predictions / f"{task.name}.{protocol}.jsonl", encoding, scored[protocol])
    model.train(was_training)
    return evaluations


def zero_shot(config: dict, model, tokenizer, tasks, order: int, seed: int, results: Path = RESULTS) -> dict[str, dict]:
    """The base model's scores per protocol: {"scores", "example_scores"}, one entry per task.

    The same for every method at one order, seed and test set, so cached, one file per protocol (the training
    subsample does not enter the key: the test sample is drawn independently of it). Evaluation dominates a run
    at this scale; sharing R0 saves one round of it per method.
    """
    folder = results / "zero_shot"
    folder.mkdir(parents=True, exist_ok=True)
    # Runs of one order and seed started side by side would each measure the same row: the first measures it
    # while the others wait for it here, then read it from the cache.
    with open(folder / f".order{order}_seed{seed}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _zero_shot_locked(config, model, tokenizer, tasks, order, seed, folder)


def _zero_shot_locked(config, model, tokenizer, tasks, order, seed, folder: Path) -> dict[str, dict]:
    data, options = config["data"], config["trainer"]
    cached, missing = {}, []
    paths = {}
    for protocol in protocols(config):
        key = json.dumps([order, seed, data["data_dir"], data["max_eval_samples"], protocol, options["max_source_length"],
                          options.get("chat_template", "off")])  # fmt: skip
        paths[protocol] = folder / f"order{order}_seed{seed}_{protocol}_{hashlib.sha1(key.encode()).hexdigest()[:8]}.json"
        if paths[protocol].exists():
            cached[protocol] = json.loads(paths[protocol].read_text())
        else:
            missing.append(protocol)
    if missing:
        for protocol, evaluations in evaluate_all(model, tokenizer, tasks, config, only=missing).items():
            cached[protocol] = {"tasks": [t.name for t in tasks], "scores": [e and e.score for e in evaluations],
                                "example_scores": [e and e.example_scores for e in evaluations]}  # fmt: skip
            atomic_write_text(paths[protocol], json.dumps(cached[protocol]) + "\n")
    return cached


def new_result(method: str, tasks, config: dict, r0: dict | None) -> ContinualResult:
    """An empty result per protocol (the primary, the others under ``secondary``), with the cached zero-shot row."""

    def empty(protocol: str) -> ContinualResult:
        zero = (r0 or {}).get(protocol)
        return ContinualResult(task_names=[t.name for t in tasks], method=method, evaluation_method=protocol,
                               task_metrics=[t.metric if can_score(protocol, t) else None for t in tasks],
                               zero_shot=zero and zero["scores"], zero_shot_example_scores=zero and zero["example_scores"])  # fmt: skip

    primary, *others = protocols(config)
    result = empty(primary)
    result.example_ids = [t.example_ids() for t in tasks]  # which test examples runs share, for joint resampling
    result.secondary = {protocol: empty(protocol) for protocol in others}
    return result


def add_row(result: ContinualResult, evaluated: list[int], evaluations: dict[str, list]) -> None:
    """Append one row (the tasks ``evaluated``, in that order) to the matrix of every protocol."""
    for protocol, target in result.by_protocol().items():
        by_task = dict(zip(evaluated, evaluations[protocol]))
        row = [by_task.get(j) for j in range(len(target.task_names))]
        target.accuracy_matrix.append([e and e.score for e in row])
        target.example_scores.append([e and e.example_scores for e in row])


def continual_trainer(config: dict, model, tokenizer, output_dir: str, seed: int, r0=None, save_steps: int = 0) -> ContinualTrainer:
    """The ContinualTrainer of a ContinualTrainer method: the PEFT config class carries the method."""
    config_class = config_classes()[config["config_class"]]
    adapter = config["lora"] if issubclass(config_class, LoraConfig) else {"target_modules": config["lora"]["target_modules"]}
    peft_config = config_class(task_type="CAUSAL_LM", **adapter, **config["method"])
    options = {k: v for k, v in config["trainer"].items() if k != "evaluate_zero_shot"}
    options.setdefault("chat_template", "off")  # the reference prompt, as the runners outside ContinualTrainer use
    trainer = ContinualTrainer(
        model=get_peft_model(model, peft_config), args=training_args(config, output_dir, seed, save_steps),
        processing_class=tokenizer, evaluate_zero_shot=False, **options,
    )  # fmt: skip
    if r0 is not None:  # the cached base-model scores: what evaluate_zero_shot=True would measure
        for protocol, result in trainer.result.by_protocol().items():
            result.zero_shot, result.zero_shot_example_scores = r0[protocol]["scores"], r0[protocol]["example_scores"]
    return trainer


def run_continual(config: dict, model, tokenizer, tasks, output_dir: str, seed: int, r0, save_steps: int) -> ContinualResult:
    """The ContinualTrainer methods; an interrupted run resumes."""
    trainer = continual_trainer(config, model, tokenizer, output_dir, seed, r0, save_steps)
    return trainer.train_continual(tasks, resume_from_checkpoint=True)


def run_mtl(config: dict, model, tokenizer, tasks, output_dir: str, seed: int, r0, save_steps: int) -> ContinualResult:
    """Upper bound: each task's examples keep their own prompt; the union is shuffled and trained once."""
    length = config["trainer"]["max_source_length"]
    features = datasets.concatenate_datasets([tokenize_task(tokenizer, t, length) for t in tasks])
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **config["lora"], **config["method"]))
    started = time.perf_counter()
    checkpoint = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    output = Trainer(model=model, args=training_args(config, output_dir, seed, save_steps), train_dataset=features,
                     data_collator=ContinualCollator(tokenizer.pad_token_id)).train(resume_from_checkpoint=checkpoint)  # fmt: skip
    seconds = round(time.perf_counter() - started, 2)
    result = new_result("mtl", tasks, config, r0)
    stage = Path(output_dir) / PREDICTIONS_DIR / f"after_1_{'+'.join(t.name for t in tasks)}"  # the single training
    add_row(result, list(range(len(tasks))), evaluate_all(model, tokenizer, tasks, config, predictions=stage))
    result.details = [{"task": "+".join(t.name for t in tasks), "train_examples": len(features), "steps": output.global_step,
                       "train_loss": output.training_loss, "train_seconds": seconds}]  # fmt: skip
    return result


def run_osf(config: dict, model, tokenizer, tasks, output_dir: str, seed: int, r0, save_steps: int) -> ContinualResult:
    """peft's OSF recipe for a sequence: wrap, train with a fresh Trainer, merge, re-wrap with a larger preserved rank.

    peft's docs unwrap with ``model.unload()``; in peft 0.21 OSF adds its update in the forward instead of writing
    it into the weights, so ``unload()`` would silently drop every task's training. ``merge_and_unload()`` keeps it.
    After each task the merged weights of the target modules and the result so far go to ``osf_progress/``, from
    which an interrupted run resumes at the next task (the task it was in starts over).
    """
    options, osf = config["trainer"], config["osf"]
    ranks = osf["effective_rank"]
    if len(ranks) != len(tasks):
        raise SystemExit(f"osf.effective_rank lists {len(ranks)} ranks for {len(tasks)} tasks")
    progress = Path(output_dir) / "osf_progress"
    if (progress / "result.json").is_file():
        result = ContinualResult.from_json(str(progress / "result.json"))
        model.load_state_dict(load_file(progress / "merged.safetensors"), strict=False)
        print(f"Resuming from {progress}: {result.num_trained}/{len(tasks)} task(s) already trained", flush=True)
    else:
        result = new_result("osf", tasks, config, r0)
    collator = ContinualCollator(tokenizer.pad_token_id)
    for i in range(result.num_trained, len(tasks)):
        task = tasks[i]
        peft_model = get_peft_model(model, OSFConfig(task_type="CAUSAL_LM", target_modules=osf["target_modules"],
                                                     effective_rank=ranks[i]))  # fmt: skip
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        features = tokenize_task(tokenizer, task, options["max_source_length"])
        started = time.perf_counter()
        output = Trainer(model=peft_model, args=training_args(config, f"{output_dir}/task_{i + 1}", seed),
                         train_dataset=features, data_collator=collator).train()  # fmt: skip
        seconds = round(time.perf_counter() - started, 2)
        evaluated = tasks_to_evaluate(i, len(tasks), options["evaluate_unseen"],
                                      options.get("evaluate_seen", "needed"))  # as ContinualTrainer does
        stage = Path(output_dir) / PREDICTIONS_DIR / f"after_{i + 1}_{task.name}"  # as ContinualTrainer names it
        evaluations = evaluate_all(peft_model, tokenizer, [tasks[j] for j in evaluated], config, predictions=stage)
        add_row(result, evaluated, evaluations)
        result.details.append({"task": task.name, "train_examples": len(features), "train_loss": output.training_loss,
                               "steps": output.global_step, "train_seconds": seconds, "effective_rank": ranks[i],
                               "trainable_parameters": trainable})  # fmt: skip
        seen = ", ".join(f"{tasks[j].name} {100 * e.score:.1f}%" for j, e in zip(evaluated, evaluations[result.evaluation_method]))
        print(f"    after {task.name}: {seen}", flush=True)
        model = peft_model.merge_and_unload()
        if i + 1 < len(tasks):
            merged = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
                      if any(f".{module}." in name for module in osf["target_modules"])}  # fmt: skip
            with atomic_directory(progress) as staging:
                save_file(merged, staging / "merged.safetensors")
                result.to_json(str(staging / "result.json"))
    return result


RUNNERS = {"mtl": run_mtl, "osf": run_osf}


def keep_predictions(folder: Path, target: Path) -> None:
    """Every evaluation's answers, without the prompts (the test set rebuilds them), as one gzipped JSONL: what the
    diagnosis of a method's forgetting reads (which wrong answers, after which task)."""
    files = sorted(folder.glob("*/*.jsonl"))  # <after>/<task>.<protocol>.jsonl, as ContinualTrainer writes them
    if not files:
        return
    rows = []
    for file in files:
        task, protocol = file.name[: -len(".jsonl")].rsplit(".", 1)
        for index, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
            record = json.loads(line)
            rows.append(json.dumps({"after": file.parent.name, "task": task, "protocol": protocol, "example": index,
                                    "target": record["target"], "prediction": record["prediction"],
                                    "score": record["score"]}, ensure_ascii=False))  # fmt: skip
    atomic_write_bytes(target, gzip.compress(("\n".join(rows) + "\n").encode("utf-8"), mtime=0))


def result_path(method: str, order: int, seed: int, overrides: list[str], results: Path = RESULTS) -> Path:
    name = f"{method}_order{order}_seed{seed}"
    if not overrides:
        return results / "accuracy" / f"{name}.json"
    suffix = "__".join(re.sub(r"[^0-9A-Za-z_.=-]", "_", item) for item in overrides)
    if len(suffix) > MAX_SUFFIX:  # file names stop at 255 bytes: keep the start readable, the hash unique
        suffix = f"{suffix[: MAX_SUFFIX - 10]}__{hashlib.sha1(suffix.encode()).hexdigest()[:8]}"
    return results / "sweeps" / f"{name}__{suffix}.json"


@contextlib.contextmanager
def claim(output_dir: Path):
    """Hold a run's folder for this process: a second process on the same run (a plan started twice) would resume
    from the checkpoints the first one is still writing and race it to the result."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"{output_dir.name} is being run by another process: wait for it, or stop it") from None
        yield


def run_benchmark(method: str, order: int, seed: int, overrides: list[str] = (), *, base: str = DEFAULT_BASE,
                  config: dict | None = None, results: Path | None = None, runs: Path = RUNS, load_model=None,
                  force: bool = False, save_steps: int = 50) -> Path:  # fmt: skip
    """Run one (method, order, seed) unless its result exists with the same config; returns the result's path.

    ``config`` defaults to ``base`` + <method>.json + ``overrides``; ``results`` to :func:`results_root` of
    ``base``; ``load_model`` returns (model, tokenizer) (default: SmolLM2 from peft_continual's cache).
    """
    overrides = list(overrides)
    config = config if config is not None else load_experiment(method, overrides, base)
    results = results if results is not None else results_root(base)
    digest = config_hash(method, order, seed, config)
    path = result_path(method, order, seed, overrides, results)
    if path.exists() and not force:
        if stored_hash(path) == digest:
            print(f"skip {path.name}: finished with this config ({digest})", flush=True)
            return path
        print(f"{path.name} holds another config: running again and replacing it", flush=True)
    output_dir = runs / f"{path.stem}-{digest}"
    resumed = output_dir.is_dir()
    with claim(output_dir):
        torch.set_num_threads(config["threads"])
        hf_logging.set_verbosity_warning()
        set_seed(seed)
        started = time.perf_counter()
        tasks = load_tasks(config, order, seed)
        model, tokenizer = (load_model or load_smollm2)()
        model.to(config.get("device", "cpu"))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        fit_generation_budgets(config, tokenizer, tasks)
        r0 = None  # no forward transfer for the joint (mtl) upper bound
        if config["trainer"]["evaluate_zero_shot"] and method != "mtl":
            r0 = zero_shot(config, model, tokenizer, tasks, order, seed, results)
        result = RUNNERS.get(method, run_continual)(config, model, tokenizer, tasks, str(output_dir), seed, r0, save_steps)
        wall = time.perf_counter() - started

        payload = result.to_dict()
        if method == "mtl":  # one row: every task's score after the single joint training, under every protocol
            for scores in [payload, *payload["secondary"].values()]:
                row = [v for v in scores["accuracy_matrix"][0] if v is not None]
                scores["average_accuracy"] = sum(row) / len(row)
        payload.update(benchmark={"method": method, "order": order, "seed": seed, "overrides": overrides, "config": config,
                                  "config_hash": digest, "wall_seconds": round(wall, 1), "resumed": resumed,
                                  "environment": environment()})  # fmt: skip
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        keep_predictions(output_dir / PREDICTIONS_DIR, results / "predictions" / f"{path.stem}.jsonl.gz")
        shutil.rmtree(output_dir, ignore_errors=True)
    print(f"AA {100 * payload['average_accuracy']:.1f}%  wall {wall:.0f} s  -> {path}", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--order", type=int, default=1, choices=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", default=DEFAULT_BASE, choices=bases(),
                        help="base experiment in experiments/ (default.json: Standard CL; generation.json: the "
                             "offline generation sequence); results of another base go to results/<its name>/")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key of the merged config, e.g. method.collision_lambda=50")  # fmt: skip
    parser.add_argument("--model-cache", default=None,
                        help="converted SmolLM2 checkpoint folder (default: peft_continual's cache, converted once)")
    parser.add_argument("--save-steps", type=int, default=50,
                        help="Trainer checkpoint every that many steps, so an interrupted task resumes (0: none)")
    parser.add_argument("--force", action="store_true", help="run even if the result exists with this config")
    args = parser.parse_args()
    # The converted SmolLM2 carries its Hub id; without this, peft looks that id up on the Hub at every adapter
    # save (a vocabulary check that fails offline with a warning). A benchmark never needs the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_benchmark(args.method, args.order, args.seed, args.overrides, base=args.base, force=args.force,
                  save_steps=args.save_steps,
                  load_model=lambda: load_smollm2(cache_dir=args.model_cache))  # fmt: skip


if __name__ == "__main__":
    main()
