"""The continual core, and ``ContinualTrainer``: a ``transformers.Trainer`` that trains a PEFT model on a sequence of
tasks.

Glue only: the task loop, a fresh optimizer and schedule per task, evaluation of every seen task after each
one, logging of each loss term, saving. What differs between methods lives in :mod:`peft_continual.methods`,
chosen by the PEFT config on the model. The core is a mixin, :class:`ContinualTrainerMixin`, so that the same task
loop runs on ``transformers.Trainer`` (:class:`ContinualTrainer`) and on TRL's ``SFTTrainer``
(:class:`~peft_continual.sft_trainer.ContinualSFTTrainer`); a trainer class only says how a task becomes training
features (:meth:`ContinualTrainerMixin._cl_features`) and which collator it uses by default.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import datasets
import torch
from accelerate.utils import gather_object
from peft import PeftModel
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .adapters import adapters_active
from .collision import collision_report
from .guard import ContinualConfigGuard
from .evaluation import EVALUATION_METHODS, EvaluationMethod, TaskEvaluation, check_protocol, evaluate_protocols, write_predictions
from .methods import ContinualMethod, build_method, task_adapter_name
from .io_utils import atomic_write_text
from .hub import (
    check_card_keywords,
    check_push_access,
    push_continual_to_hub,
    push_saved_run,
    render_model_card,
    save_continual_with_card,
)
from .metrics import ContinualResult
from .retention import RetentionSource, RetentionTrack, TaskRetention, build_retention_sources, format_drift
from .target_logits import supports_target_logits, with_target_logits
from .persistence import (
    METHOD_STATE_FILE,
    ContinualStateError,
    base_differences,
    base_fingerprint,
    check_folder_is_safe,
    continual_state,
    load_adapter_weights,
    load_continual_model,
    load_method_state,
    read_method_meta,
    read_state,
    save_continual,
    save_method_state,
    task_from_dict,
    training_arguments,
)
from .tasks import (
    GENERATION,
    ChatTemplateMode,
    ContinualCollator,
    ContinualTask,
    EvalEncoding,
    check_unique_names,
    encode_eval,
    fit_max_new_tokens,
    tokenize_task,
    use_chat_template,
)

logger = logging.get_logger(__name__)

PROGRESS_DIR = "continual_progress"
EvaluateSeen = Literal["needed", "all"]
PREDICTIONS_DIR = "predictions"


class _MethodCallback(TrainerCallback):
    """Forwards the optimizer-step event to the method (e.g. I-LoRA's EMA)."""

    def __init__(self, trainer: "ContinualTrainerMixin"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.method.after_optimizer_step(self.trainer.peft_model)

    def on_save(self, args, state, control, **kwargs):
        """Put the method's state (replay buffer, EMA step, ...) into the checkpoint Trainer just wrote."""
        if state.is_world_process_zero:
            save_method_state(self.trainer.method, os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))


def tasks_to_evaluate(
    index: int, num_tasks: int, evaluate_unseen: Union[bool, Literal["next"]], evaluate_seen: EvaluateSeen = "needed"
) -> list[int]:
    """Indices of the tasks scored after training task ``index`` of ``num_tasks``.

    Seen tasks: with ``"needed"`` only the task just trained (the diagonal), and every task after the last one (the
    row AA, BWT and forgetting read); with ``"all"`` every seen task after every task (the lower triangle). Unseen
    tasks per ``evaluate_unseen``: ``"next"`` the next one (forward transfer), ``True`` all, ``False`` none.
    """
    seen = range(index + 1) if evaluate_seen == "all" or index == num_tasks - 1 else [index]
    unseen_end = {True: num_tasks, False: index + 1, "next": min(index + 2, num_tasks)}[evaluate_unseen]
    return [*seen, *range(index + 1, unseen_end)]


def last_complete_checkpoint(task_dir: str) -> Optional[str]:
    """The task's newest Trainer checkpoint that holds the method's state too (replay buffer, slow learner, ...).

    The method's state is written by a callback after Trainer's own files: a run stopped in between leaves a newer
    checkpoint without it, and resuming from that one would continue with the state of the task's start. It is
    passed over (said), and the one before it used; None when the task has none (it restarts from its beginning).
    """
    folder = Path(task_dir)
    steps = sorted((int(p.name.split("-")[-1]), p) for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                   if p.is_dir() and p.name.split("-")[-1].isdigit())  # fmt: skip
    for _, checkpoint in reversed(steps):
        if (checkpoint / METHOD_STATE_FILE).is_file():
            return str(checkpoint)
        logger.warning(f"{checkpoint} lacks the method's state (the run stopped while saving it): resuming from an earlier checkpoint")
    return None


def merge_evaluations(parts: Sequence[Optional[TaskEvaluation]]) -> TaskEvaluation:
    """One evaluation from those of consecutive shards of the rows (``None`` for an empty shard), in row order."""
    parts = [p for p in parts if p is not None]
    scores = [score for p in parts for score in p.example_scores]
    return TaskEvaluation(
        score=sum(scores) / len(scores), metric=parts[0].metric, method=parts[0].method, num_examples=len(scores),
        predictions=[prediction for p in parts for prediction in p.predictions], example_scores=scores,
    )  # fmt: skip


MIN_STEPS_PER_TASK = 10  # fewer optimizer steps than this rarely learn a task: say so before training


class ContinualTrainerMixin:
    """The continual core of a ``transformers.Trainer`` subclass: train a ``PeftModel`` on tasks one after the other.

    The continual method and its hyper-parameters come from the PEFT config of the model (see
    :mod:`peft_continual.configs`). Each task trains in ``<output_dir>/task_<i>_<name>`` with a fresh optimizer and
    learning-rate schedule; after each task every task seen so far is evaluated and the score matrix grows
    (each task scored by its own metric, see :mod:`peft_continual.scoring`).

    Args:
        evaluation_method: ``"generate"`` (greedy generation scored by each task's metric, the papers' protocol,
            which also counts an answer in an earlier task's format as wrong; default) or ``"rank"`` (label ranking
            by log-likelihood: faster, classification tasks only, blind to format forgetting), or a list of both:
            the first fills the score matrix, the others fill ``result.secondary[<protocol>]`` from the same run
            (tasks a secondary protocol cannot score are skipped; both protocols share one run of each prompt).
        chat_template: ``"auto"`` (render prompts with the tokenizer's chat template when it has one), ``"on"``
            or ``"off"`` (the reference prompt).
        max_new_tokens: cap on generated tokens; a generation task without its own ``max_new_tokens`` gets its
            longest reference (training targets and evaluation answers, in tokens; at least 32), capped by this.
        save_predictions: write every evaluation's predictions to
            ``<output_dir>/predictions/after_<i>_<trained task>/<task>.<protocol>.jsonl`` (``zero_shot/`` for the base
            model): prompt, target, prediction, score.
        max_source_length: prompt length in tokens; longer texts are shortened, never the options or question.
        evaluate_zero_shot: evaluate the base model on every task first (needed for forward transfer).
        evaluate_seen: ``"needed"`` (default) evaluates, after each task, the task just trained, and after the last
            task every task: all that AA, BWT and FWT read (forgetting then takes its maximum over the evaluated
            cells, i.e. the diagonal). ``"all"`` evaluates every seen task after every task (the lower triangle, a
            forgetting curve), at T(T - 1)/2 task evaluations instead of T - 1.
        evaluate_unseen: after each task, also evaluate tasks not trained yet: ``True`` every one (the whole upper
            triangle), ``"next"`` only the next task (the super-diagonal: all that forward transfer needs, at
            T - 1 task evaluations instead of T(T - 1)/2), ``False`` none.
        collision_eps: thresholds of the collision analysis run at the end for task-adapter methods
            (relative to each dW's largest entry); empty to skip it.
        logits_on_targets_only: in training, run the LM head only on positions that predict a target token (the
            loss is unchanged; the head's time and the logits' memory shrink to the answer's share). Used where
            the model supports it (``logits_to_keep`` and transformers' causal-LM loss) and no label smoother or
            custom loss is set.
        retention_tasks: never-trained probes of what the run does beyond its tasks, scored on the base model and
            after every task into ``result.retention`` (see :mod:`peft_continual.retention`): ``ContinualTask``
            objects (their evaluation split), ``"general"`` (the built-in general-ability suite; ``"general:N"``
            for N items a part, ``"general:full"``) and ``"lm_eval:TASK[,TASK]"``. Every process evaluates them.
        lm_eval_include_path: folder(s) of your own lm-eval task YAMLs, for ``lm_eval:`` retention tasks.
        lm_eval_limit: items per lm-eval task at most (lm-eval's ``limit``).
    """

    def __init__(
        self,
        model: PeftModel = None,
        args: TrainingArguments = None,
        *,
        processing_class=None,
        evaluation_method: Union[EvaluationMethod, Sequence[EvaluationMethod]] = "generate",
        chat_template: ChatTemplateMode = "auto",
        max_new_tokens: int = 128,
        save_predictions: bool = True,
        max_source_length: int = 256,
        evaluate_zero_shot: bool = False,
        evaluate_unseen: Union[bool, Literal["next"]] = False,
        evaluate_seen: EvaluateSeen = "needed",
        collision_eps: Sequence[float] = (0.001, 0.01, 0.1),
        logits_on_targets_only: bool = True,
        retention_tasks: Sequence = (),
        lm_eval_include_path=None,
        lm_eval_limit: Optional[int] = None,
        **kwargs,
    ):
        if not isinstance(model, PeftModel):
            raise TypeError(
                f"{type(self).__name__} needs a PeftModel: wrap the model first, e.g. "
                "get_peft_model(model, NLoraConfig(r=8, target_modules=[...]))"
            )
        if processing_class is None:
            raise ValueError(f"{type(self).__name__} needs the tokenizer: pass processing_class=tokenizer")
        methods = [evaluation_method] if isinstance(evaluation_method, str) else list(evaluation_method)
        if not methods or any(m not in EVALUATION_METHODS for m in methods) or len(set(methods)) != len(methods):
            raise ValueError(f"evaluation_method must be 'rank' or 'generate', or a list of both, got {evaluation_method!r}")
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if evaluate_unseen not in (True, False, "next"):
            raise ValueError(f"evaluate_unseen must be True, False or 'next', got {evaluate_unseen!r}")
        if evaluate_seen not in ("needed", "all"):
            raise ValueError(f"evaluate_seen must be 'needed' or 'all', got {evaluate_seen!r}")
        if max_source_length <= 0:
            raise ValueError(f"max_source_length must be positive, got {max_source_length}")
        if args is not None and args.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end is not supported: Trainer reloads a single adapter; every task's final "
                "adapters are kept and evaluated instead"
            )
        if processing_class.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token: set tokenizer.eos_token before training")
        self.retention: list[RetentionSource] = build_retention_sources(
            retention_tasks, lm_eval_include_path=lm_eval_include_path, lm_eval_limit=lm_eval_limit)  # before any model work
        for source in self.retention:
            if isinstance(source, TaskRetention):
                check_protocol(methods[0], source.task)
        if processing_class.pad_token_id is None:
            processing_class.pad_token = processing_class.eos_token
        self.chat = use_chat_template(processing_class, chat_template)  # 'on' without a template fails here
        collator = self._cl_default_collator(processing_class)
        if collator is not None:
            kwargs.setdefault("data_collator", collator)
        # Trainer would create the repo now and push every task's checkpoints; the run is pushed once, at the end.
        self.push_at_end = args is not None and args.push_to_hub
        if self.push_at_end:
            check_push_access(args)  # network, token and repo, before any training: an upload must not cost a run
            args = copy.copy(args)
            args.push_to_hub = False
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        self.remove_callback(ContinualConfigGuard)  # the guard stops continual configs in other trainers, not here
        if self.args.n_gpu > 1:
            raise ValueError(
                f"this process sees {self.args.n_gpu} GPUs, so Trainer would wrap the model in nn.DataParallel, which "
                f"{type(self).__name__} does not support (its extra loss terms and replay forwards run on one device). "
                f"Launch one process per GPU: `accelerate launch --num_processes {self.args.n_gpu} script.py ...` or "
                f"`torchrun --nproc_per_node {self.args.n_gpu} script.py ...`; or use one GPU (CUDA_VISIBLE_DEVICES=0)"
            )
        if self.is_fsdp_enabled:
            raise ValueError(
                f"FSDP is not supported: {type(self).__name__} reads adapter weights outside the forward pass (evaluation, "
                "the N-LoRA/O-LoRA penalties, I-LoRA's EMA, saving), which FSDP leaves sharded. Use DDP (the LoRA "
                "adapters are small; load the base in bf16) or DeepSpeed ZeRO-3, whose parameters are gathered there"
            )
        if self.args.dataloader_pin_memory and self.args.device.type == "cpu":
            self.args.dataloader_pin_memory = False  # nothing to pin for: torch would warn at every epoch
        self.logits_on_targets_only = (
            logits_on_targets_only and self.label_smoother is None and self.compute_loss_func is None
            and self._cl_target_logits and supports_target_logits(self.peft_model)
        )  # fmt: skip
        self.method: ContinualMethod = build_method(self.peft_model)
        self.method.setup(
            self.peft_model, collator=self.data_collator, batch_size=self.args.per_device_train_batch_size,
            seed=self.args.seed, process_index=self.args.process_index, num_processes=self.args.world_size,
            logits_on_targets_only=self.logits_on_targets_only,
        )  # fmt: skip
        self.add_callback(_MethodCallback(self))
        self.base_fingerprint = base_fingerprint(self.peft_model)  # before any merge: the base the run refers to
        self.evaluation_methods = methods
        self.evaluation_method = methods[0]
        self.chat_template_mode = chat_template  # not chat_template: TRL's SFTTrainer keeps its template string there
        self.max_new_tokens = max_new_tokens
        self.save_predictions = save_predictions
        self.max_source_length = max_source_length
        self.evaluate_zero_shot = evaluate_zero_shot
        self.evaluate_unseen = evaluate_unseen
        self.evaluate_seen = evaluate_seen
        self.collision_eps = tuple(collision_eps)
        self.continual_args = self.args  # the user's arguments; each task trains with a copy in its own folder
        self.tasks: list[ContinualTask] = []
        self.result = self._new_result()
        self._cl_loss_terms: dict[str, list[float]] = defaultdict(list)
        self._cl_task_in_training: Optional[int] = None
        self._eval_encodings: dict[str, EvalEncoding] = {}  # each task's prompts, encoded once

    # ------------------------------------------------------------------------------------------ what a trainer class sets

    _cl_target_logits = True  # the trainer's loss is transformers' causal-LM loss, which logits_to_keep can shorten

    def _cl_default_collator(self, tokenizer):
        """The collator used when none is given (None: the base trainer's own)."""
        return ContinualCollator(tokenizer.pad_token_id)

    def _cl_features(self, task: ContinualTask) -> datasets.Dataset:
        """A task's training features (``input_ids`` and ``labels``, -100 where no loss is taken), for the collator."""
        return tokenize_task(self.processing_class, task, self.max_source_length, self.chat)

    def _new_result(self) -> ContinualResult:
        result = ContinualResult(method=self.method.name, evaluation_method=self.evaluation_method,
                                 task_aware=type(self.method).task_aware_adapters is not ContinualMethod.task_aware_adapters)
        result.secondary = {m: ContinualResult(method=self.method.name, evaluation_method=m) for m in self.evaluation_methods[1:]}
        return result

    @property
    def peft_model(self) -> PeftModel:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------------------------------ task loop

    def train_continual(self, tasks: Sequence[ContinualTask], resume_from_checkpoint: bool = False) -> ContinualResult:
        """Train ``tasks`` in order (after any already trained), evaluating after each; returns the result.

        After each task the run's state is saved to ``<output_dir>/continual_progress``. With
        ``resume_from_checkpoint=True`` an interrupted run of the same tasks continues from there: finished
        tasks are not retrained, and the interrupted task resumes from its last Trainer checkpoint.

        With ``args.push_to_hub`` the run is saved into ``<output_dir>/final``, then uploaded; a failed upload raises
        :class:`~peft_continual.hub.HubUploadError`, which names that folder.
        """
        tasks = list(tasks)
        if not tasks:
            raise ValueError("train_continual needs at least one task")
        check_unique_names(self.tasks + tasks)
        self._cl_check_retention(self.tasks + tasks)
        for task in tasks:
            check_protocol(self.evaluation_method, task)
        self.method.check_before_training(self.peft_model, len(self.tasks) + len(tasks))
        features = [self._cl_features(t) for t in tasks]  # fail early
        for task, encoded in zip(tasks, features):
            fit_max_new_tokens(self.processing_class, task, encoded, self.max_new_tokens)
        first_new = len(self.tasks)
        if not resume_from_checkpoint and not self.tasks:
            self._cl_refuse_to_overwrite_progress()
        finished = self._cl_restore_progress(tasks) if resume_from_checkpoint else None
        if finished is None:
            self._cl_register_tasks(tasks)
            if self.evaluate_zero_shot:
                self._cl_evaluate_zero_shot(tasks)
            finished = 0
        self._cl_measure_retention(row=0)  # the base's scores of retention tasks not measured yet
        for offset in range(finished, len(tasks)):
            index = first_new + offset
            task_dir = os.path.join(self.continual_args.output_dir, task_adapter_name(index, tasks[offset].name))
            checkpoint = last_complete_checkpoint(task_dir) if resume_from_checkpoint else None
            self._cl_train_task(index, tasks[offset], features[offset], checkpoint)
        if self.is_world_process_zero():  # the analysis is for the record: one process computes it
            adapters = self.method.task_adapters()
            if self.collision_eps and len(adapters) > 1:
                self.result.collision = collision_report(self.peft_model, adapters, self.collision_eps)
            print(f"\nScore matrix ({self.method.name}):\n{self.result.format_table()}", flush=True)
        if self.push_at_end:  # saved first: a failed upload names the folder that holds the run
            final = os.path.join(self.continual_args.output_dir, "final")
            self.save_continual(final)
            push_saved_run(self, final)
        return self.result

    def train_task(self, task: ContinualTask) -> ContinualResult:
        """Train one more task (tasks that arrive over time); extends the same result."""
        return self.train_continual([task])

    def _cl_register_tasks(self, tasks: Sequence[ContinualTask]) -> None:
        self.tasks += tasks
        for protocol, result in self.result.by_protocol().items():
            result.task_names += [t.name for t in tasks]
            result.task_metrics += [None if protocol == "rank" and t.kind == GENERATION else t.metric for t in tasks]
            T = len(result.task_names)
            for matrix in (result.accuracy_matrix, result.example_scores):
                for row in matrix:
                    row += [None] * (T - len(row))
            if result.zero_shot is not None:
                result.zero_shot += [None] * (T - len(result.zero_shot))
                examples = result.zero_shot_example_scores or []  # none where zero_shot was set from outside
                result.zero_shot_example_scores = examples + [None] * (T - len(examples))
        earlier = len(self.result.task_names) - len(tasks)  # a run saved before ids were recorded has none
        self.result.example_ids = (self.result.example_ids or [None] * earlier) + [t.example_ids() for t in tasks]

    def _adopt_result(self, result: ContinualResult) -> None:
        """A restored result, with an empty (unscored) matrix for any secondary protocol it did not have."""
        if result.evaluation_method != self.evaluation_method:
            raise ValueError(
                f"the saved run was scored by {result.evaluation_method!r}, not {self.evaluation_method!r}: keep its "
                "primary evaluation_method (other protocols may follow it in a list)"
            )
        for protocol in self.evaluation_methods[1:]:
            if protocol not in result.secondary:
                T, rows = len(result.task_names), len(result.accuracy_matrix)
                result.secondary[protocol] = ContinualResult(
                    task_names=list(result.task_names), task_metrics=[None] * T, accuracy_matrix=[[None] * T for _ in range(rows)],
                    example_scores=[[None] * T for _ in range(rows)], evaluation_method=protocol, method=result.method,
                )  # fmt: skip
        self.result = result

    def _cl_refuse_to_overwrite_progress(self) -> None:
        """A fresh run must not silently start over (and overwrite) the resumable run in the same output_dir."""
        folder = os.path.join(self.continual_args.output_dir, PROGRESS_DIR)
        if os.path.isdir(folder):
            raise ContinualStateError(
                f"{self.continual_args.output_dir!r} holds the progress of an earlier run ({folder}): pass "
                "resume_from_checkpoint=True (--resume_from_checkpoint true) to continue it, or use another "
                f"output_dir (or delete {folder}) to start over"
            )

    def _cl_restore_progress(self, tasks: list[ContinualTask]) -> Optional[int]:
        """Reload the progress an interrupted run saved; returns how many of ``tasks`` it finished (None: none saved)."""
        folder = os.path.join(self.continual_args.output_dir, PROGRESS_DIR)
        if not os.path.isdir(folder):
            return None
        state, tensors = read_state(folder)
        expected, saved = [t.name for t in self.tasks + tasks], [t["name"] for t in state["tasks"]]
        if saved != expected or state["config_class"] != type(self.method.config).__name__:
            raise ContinualStateError(
                f"{folder!r} holds a {state['config_class']} run over tasks {saved}, not a "
                f"{type(self.method.config).__name__} run over {expected}: resume with the same method and tasks, "
                "or use another output_dir"
            )
        self._cl_check_hyperparameters(state["method_state"], folder)
        differences = base_differences((state.get("base_model") or {}).get("fingerprint"), self.base_fingerprint)
        if differences:
            raise ContinualStateError(
                f"{folder!r} was trained on another base model ({state['base_model'].get('name_or_path')!r}), not "
                f"the base model given: its weights differ in {differences}. Resume with the run's base model."
            )
        load_adapter_weights(self.peft_model, folder, state["adapters"], self.method.config)
        self.method.load_state_dict(state["method_state"], tensors, self.peft_model)
        self._adopt_result(ContinualResult.from_dict(state["result"]))
        self._cl_load_retention_state(state)
        self.tasks = self.tasks + tasks
        self.restore_adapter_state()
        finished = len(self.result.accuracy_matrix) - (len(self.tasks) - len(tasks))
        if self.is_world_process_zero():
            print(f"Resuming from {folder}: {finished}/{len(tasks)} task(s) already trained", flush=True)
        return finished

    def _cl_check_hyperparameters(self, saved_meta: dict, folder: str) -> None:
        """A run resumes with the hyper-parameters it was trained with; runs saved before they were recorded pass."""
        saved, current = saved_meta.get("hyperparameters") or {}, self.method.hyperparameter_values()
        changed = {k: (v, current[k]) for k, v in saved.items() if k in current and current[k] != v}
        if changed:
            listed = ", ".join(f"{k}={old!r} there, {new!r} now" for k, (old, new) in changed.items())
            raise ContinualStateError(
                f"{folder!r} was trained with other hyper-parameters ({listed}): resume with the saved ones, or use "
                "another output_dir for a new run"
            )

    def _cl_train_task(self, index: int, task: ContinualTask, features, checkpoint: Optional[str] = None) -> None:
        T = len(self.tasks)
        if self.is_world_process_zero():
            print(f"\n=== [{self.method.name}] task {index + 1}/{T}: {task.name} ({len(features)} examples)", flush=True)
        model = self.peft_model
        # A task's adapter initialisation and data order depend on the seed and its index only, not on what ran
        # before in this process: a run resumed at a task boundary continues exactly as an uninterrupted one.
        set_seed(self.continual_args.seed + index)
        resumed_meta = checkpoint and read_method_meta(checkpoint)
        if resumed_meta:
            self._cl_check_hyperparameters(resumed_meta, checkpoint)
        started = time.perf_counter()
        self.method.prepare_task(self, index, resumed_meta=resumed_meta)  # e.g. SSR's synthesis: timed apart
        prepare_seconds = time.perf_counter() - started
        self.method.begin_task(model, index, task.name)
        self.args = copy.copy(self.continual_args)  # not dataclasses.replace: that would reset the accelerator state
        self.args.output_dir = os.path.join(self.continual_args.output_dir, task_adapter_name(index, task.name))
        self.train_dataset = features
        self.optimizer, self.lr_scheduler = None, None  # a fresh optimizer and schedule per task
        self.model_wrapped = self.model  # and a fresh DDP wrapper: the old one only syncs the old adapter's grads
        self._cl_warn_if_few_steps(task, len(features))
        started = time.perf_counter()
        self._cl_task_in_training = index
        try:
            output = self.train(resume_from_checkpoint=checkpoint)
        finally:
            self._cl_task_in_training = None
            self.args = self.continual_args  # Trainer APIs called later (save_model, log, ...) see the user's folder
        train_seconds = time.perf_counter() - started
        self.method.end_task(model, index, features)
        evaluated = tasks_to_evaluate(index, T, self.evaluate_unseen, self.evaluate_seen)
        evaluations = self.evaluate_tasks([self.tasks[j] for j in evaluated], stage=f"after_{index + 1}_{task.name}")
        for protocol, result in self.result.by_protocol().items():
            row, examples = [None] * len(result.task_names), [None] * len(result.task_names)
            for j, evaluation in zip(evaluated, evaluations[protocol]):
                if evaluation is not None:
                    row[j], examples[j] = evaluation.score, evaluation.example_scores
            result.accuracy_matrix.append(row)
            result.example_scores.append(examples)
        accuracies = [e.score for e in evaluations[self.evaluation_method]]
        started = time.perf_counter()
        self._cl_measure_retention(row=index + 1, stage=f"after_{index + 1}_{task.name}")
        retention_seconds = time.perf_counter() - started
        self._cl_log_scores(evaluated, accuracies)
        self.result.details.append({
            "task": task.name, "train_examples": len(features), "train_loss": output.training_loss,
            "steps": output.global_step, "prepare_seconds": round(prepare_seconds, 2),
            "train_seconds": round(train_seconds, 2), "retention_seconds": round(retention_seconds, 2),
            "eval_examples": [len(self.tasks[j].eval) for j in evaluated],
            "training_arguments": training_arguments(self.continual_args),  # as this task trained (the model card)
        })  # fmt: skip
        self.restore_adapter_state()
        if self.is_world_process_zero():
            save_continual(self, os.path.join(self.continual_args.output_dir, PROGRESS_DIR))
            seen = ", ".join(f"{self.tasks[j].name} {100 * a:.1f}%" for j, a in zip(evaluated, accuracies))
            print(f"    after {task.name}: {seen}", flush=True)
            for name, track in self.result.retention.items():
                print(f"    retention {name}: {format_drift(track)}", flush=True)

    def _cl_warn_if_few_steps(self, task: ContinualTask, num_examples: int) -> None:
        """A task of a few optimizer steps barely moves its adapter and scores near zero-shot: say it before training."""
        args = self.args
        batches = math.ceil(num_examples / (args.per_device_train_batch_size * max(args.world_size, 1)))
        steps_per_epoch = max(batches // args.gradient_accumulation_steps, 1)
        steps = args.max_steps if args.max_steps > 0 else math.ceil(steps_per_epoch * args.num_train_epochs)
        if steps < MIN_STEPS_PER_TASK and self.is_world_process_zero():
            logger.warning(
                f"task {task.name!r} trains for only {steps} optimizer step(s) ({num_examples} examples, batch "
                f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} accumulation x "
                f"{max(args.world_size, 1)} process(es), {args.num_train_epochs:g} epoch(s)): an adapter this short "
                f"rarely learns its task. Give it at least {MIN_STEPS_PER_TASK}: more examples or epochs "
                "(num_train_epochs), a smaller per_device_train_batch_size, or max_steps"
            )

    def train(self, *args, **kwargs):
        """Trains the current task of :meth:`train_continual`; called alone there is no task to train."""
        if self._cl_task_in_training is None:
            raise RuntimeError(
                f"{type(self).__name__} trains a sequence of tasks: call trainer.train_continual([ContinualTask(...), ...]) "
                "or trainer.train_task(task) instead of trainer.train() (see peft_continual.load_continual_tasks)"
            )
        return super().train(*args, **kwargs)

    def _cl_log_scores(self, evaluated: Sequence[int], scores: Sequence[float]) -> None:
        """Report the new row of the matrix and the run's metrics to ``report_to`` loggers and callbacks.

        Keys follow Trainer's naming of several eval sets (``eval_<name>_<metric>``), so W&B and TensorBoard show
        them as ``eval/<task>_accuracy`` and ``eval/continual_average_accuracy``.
        """
        metrics = {f"eval_{self.tasks[j].name}_{self.result.task_metrics[j]}": score for j, score in zip(evaluated, scores)}
        metrics.update({f"eval_retention_{name}": track.scores[-1] for name, track in self.result.retention.items()
                        if track.scores[-1] is not None})  # fmt: skip
        metrics["eval_continual_tasks_trained"] = self.result.num_trained
        metrics.update({f"eval_continual_{k}": v for k, v in self.result.summary().items() if v is not None})
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)

    def restore_adapter_state(self) -> None:
        """Re-assert which adapters are active and trainable (after loading or any adapter operation)."""
        self.method.restore_adapter_state(self.peft_model)

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate_tasks(
        self, tasks: Sequence[ContinualTask], stage: Optional[str] = None
    ) -> dict[str, list[Optional[TaskEvaluation]]]:
        """Each task under every protocol with the method's evaluation learner (e.g. I-LoRA's slow adapter).

        Returns ``{protocol: [evaluation or None (protocol cannot score the task)]}``; with ``stage`` and
        ``save_predictions``, predictions go to ``<output_dir>/predictions/<stage>/``.
        """
        model = self.peft_model
        was_training = model.training
        model.eval()
        try:
            with adapters_active(model, self.method.eval_adapters()), self.autocast_smart_context_manager():
                return self._evaluate_all(model, tasks, stage)
        finally:
            model.train(was_training)

    def _evaluate_all(self, model, tasks: Sequence[ContinualTask], stage: Optional[str]) -> dict[str, list[Optional[TaskEvaluation]]]:
        per_task = [self._cl_evaluate_task(model, task, stage) for task in tasks]
        return {protocol: [scored.get(protocol) for scored in per_task] for protocol in self.evaluation_methods}

    def eval_encoding(self, task: ContinualTask) -> EvalEncoding:
        """The task's evaluation prompts, encoded on first use and reused by every later evaluation."""
        if task.name not in self._eval_encodings:
            self._eval_encodings[task.name] = encode_eval(self.processing_class, task, self.max_source_length, self.chat)
        return self._eval_encodings[task.name]

    def _cl_evaluate_task(self, model, task: ContinualTask, stage: Optional[str]) -> dict[str, TaskEvaluation]:
        """Score ``task`` under every protocol that can score it (one run of its prompts for all); under DDP each
        process scores a contiguous shard of its rows and all get the same result.

        Under DeepSpeed ZeRO-3 every forward gathers parameters collectively, so every process must run the same
        forwards: each scores all rows.
        """
        encoding = self.eval_encoding(task)
        world_size = 1 if is_deepspeed_zero3_enabled() else self.args.world_size
        shard = encoding
        if world_size > 1:
            n, rank = len(encoding.prompts), self.args.process_index
            start, end = n * rank // world_size, n * (rank + 1) // world_size
            shard = dataclasses.replace(encoding, prompts=encoding.prompts[start:end],
                                        prompt_texts=encoding.prompt_texts[start:end],
                                        references=encoding.references[start:end])  # fmt: skip
        protocols = [p for p in self.evaluation_methods if not (p == "rank" and task.kind == GENERATION)]
        part = None
        if shard.prompts:  # a task with fewer rows than processes leaves some processes without rows
            part = evaluate_protocols(
                model, self.processing_class, task, protocols, batch_size=self.args.per_device_eval_batch_size,
                max_new_tokens=task.max_new_tokens or (self.max_new_tokens if task.kind == GENERATION else None),
                encoding=shard,
            )  # fmt: skip
        parts = gather_object([part]) if world_size > 1 else [part]
        evaluations = {p: merge_evaluations([part and part[p] for part in parts]) for p in protocols}
        if stage is not None and self.save_predictions and self.is_world_process_zero():
            folder = os.path.join(self.continual_args.output_dir, PREDICTIONS_DIR, stage)
            for protocol, evaluation in evaluations.items():
                write_predictions(os.path.join(folder, f"{task.name}.{protocol}.jsonl"), encoding, evaluation)
        return evaluations

    def _cl_base_intact(self) -> bool:
        """Whether disabling the adapters still gives the base model (no adapter was merged into it)."""
        return not getattr(self.method, "merged", None)

    @torch.no_grad()
    def _cl_evaluate_zero_shot(self, tasks: Sequence[ContinualTask]) -> None:
        if not self._cl_base_intact():  # the base is gone: what disable_adapter() leaves is trained
            logger.warning(
                f"zero-shot scores of {[t.name for t in tasks]} are not measured: this run merged adapters into the "
                "base model, so the base model's own scores cannot be read any more (their zero-shot cells stay empty)"
            )
            return
        model = self.peft_model
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter(), self.autocast_smart_context_manager():
                evaluations = self._evaluate_all(model, tasks, stage="zero_shot")
        finally:
            model.train(was_training)
            self.restore_adapter_state()  # leaving disable_adapter() unfreezes every adapter
        for protocol, result in self.result.by_protocol().items():
            earlier = len(result.task_names) - len(tasks)
            known = (result.zero_shot or [])[:earlier]
            known_examples = (result.zero_shot_example_scores or [])[:earlier]
            result.zero_shot = known + [None] * (earlier - len(known)) + [e and e.score for e in evaluations[protocol]]
            result.zero_shot_example_scores = (
                known_examples + [None] * (earlier - len(known_examples)) + [e and e.example_scores for e in evaluations[protocol]]
            )
        scores = [e.score for e in evaluations[self.evaluation_method]]
        if self.is_world_process_zero():
            print("zero-shot: " + ", ".join(f"{t.name} {100 * s:.1f}%" for t, s in zip(tasks, scores)), flush=True)

    # ------------------------------------------------------------------------------------------ retention

    def _cl_check_retention(self, tasks: Sequence[ContinualTask]) -> None:
        """A retention task must never be trained (by name or by its evaluation rows), and a probe added to a run
        whose base was merged away cannot get its base scores."""
        trained = {t.name: t for t in tasks}
        for source in self.retention:
            if not isinstance(source, TaskRetention):
                continue
            same_rows = [t.name for t in tasks if t.example_ids() == source.task.example_ids()]
            if source.name in trained or same_rows:
                raise ValueError(
                    f"retention task {source.name!r} is also a training task ({(same_rows or [source.name])[0]!r}): a "
                    "retention task is never trained; pass held-out data, or drop it from the retention tasks"
                )
        missing = [s.name for s in self.retention if not self._cl_has_base_row(s)]
        if missing and self.result.accuracy_matrix and not self._cl_base_intact():
            raise ValueError(
                f"retention tasks {missing} are new to a run that merged adapters into the base model, so the base's "
                "scores they are compared with cannot be measured any more: give them from the run's start"
            )

    def _cl_load_retention_state(self, state: dict) -> None:
        """What a saved run's retention sources kept (the general suite's base answers), for the same sources."""
        saved = state.get("retention_state") or {}
        for source in self.retention:
            if source.name in saved:
                source.load_state_dict(saved[source.name])

    def _cl_has_base_row(self, source: RetentionSource) -> bool:
        return any(t.source == source.name and t.scores and t.scores[0] is not None for t in self.result.retention.values())

    @torch.no_grad()
    def _cl_measure_retention(self, row: int, stage: str = "zero_shot") -> None:
        """Score the retention tasks into row ``row`` of their tracks: 0 is the base (adapters disabled; only the
        sources without it yet), i is after task i (the method's evaluation adapters)."""
        sources = [s for s in self.retention if not self._cl_has_base_row(s)] if row == 0 else self.retention
        if not sources:
            return
        started = time.perf_counter()
        model = self.peft_model
        was_training = model.training
        model.eval()
        context = model.disable_adapter() if row == 0 else adapters_active(model, self.method.eval_adapters())
        try:
            with context, self.autocast_smart_context_manager():
                measured = [(source.name, name, m) for source in sources
                            for name, m in source.measure(self, base=row == 0, stage=stage).items()]  # fmt: skip
        finally:
            model.train(was_training)
            self.restore_adapter_state()  # leaving disable_adapter() unfreezes every adapter
        for source, name, measure in measured:
            track = self.result.retention.setdefault(
                name, RetentionTrack(name, measure.metric, measure.higher_is_better, [], [], source=source))
            for values in (track.scores, track.example_scores):
                values += [None] * (row + 1 - len(values))
            scores = measure.example_scores
            track.scores[row] = None if scores is None else sum(scores) / len(scores)
            track.example_scores[row] = scores
        if row == 0 and self.is_world_process_zero():
            scores = ", ".join(f"{name} {track.scores[0]:.3f}" for name, track in self.result.retention.items()
                               if track.scores[0] is not None)  # fmt: skip
            print(f"retention, base model ({time.perf_counter() - started:.0f} s): {scores}", flush=True)

    # ------------------------------------------------------------------------------------------ losses

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and self.logits_on_targets_only and "labels" in inputs:
            inputs = with_target_logits(inputs)
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        if model.training:
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
            accumulation = self.current_gradient_accumulation_steps
            # Extra terms are per-micro-batch values; like the task loss they must sum to one step's worth.
            extra_scale = 1.0 / accumulation if scaled else 1.0
            task_weight, terms = self.method.loss_terms(self.peft_model, inputs, wrapped=model, accumulation=accumulation)
            self._cl_record("loss_task", loss.detach() * (accumulation if scaled else 1.0))
            loss = task_weight * loss
            for name, term in terms.items():
                self._cl_record(name, term.detach())
                loss = loss + extra_scale * term.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _cl_record(self, name: str, value: torch.Tensor) -> None:
        value = value.float().item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{name} is {value} at step {self.state.global_step + 1} of task {len(self.result.accuracy_matrix) + 1}: "
                "lower the learning rate or the method's weights, or train in fp32"
            )
        self._cl_loss_terms[name].append(value)

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and self._cl_loss_terms:
            logs.update({name: sum(v) / len(v) for name, v in self._cl_loss_terms.items()})
            self._cl_loss_terms.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ saving

    def save_continual(self, output_dir: str, model_card: bool = True, include_data: bool = True):
        """Save every adapter, the root adapter for plain peft, the continual state and a model card (atomic).

        ``include_data=False`` leaves out the tasks' evaluation rows and the replay buffer (see :meth:`push_to_hub`).
        """
        if not self.is_world_process_zero():
            return None
        if model_card:
            return save_continual_with_card(self, output_dir, include_data=include_data)
        return save_continual(self, output_dir, include_data=include_data)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Trainer's checkpoints stay Trainer's; a user's ``save_model(out)`` writes the continual layout.

        So ``PeftModel.from_pretrained(base, out)`` loads the whole continual model, as after :meth:`save_continual`.
        """
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        self.save_continual(output_dir or self.continual_args.output_dir)

    def create_model_card(self, **card) -> None:
        """Write the continual run's model card (method, task sequence, score matrix) as ``README.md`` in
        ``args.output_dir``, instead of Trainer's generic draft, which knows nothing of the tasks and would replace
        the card of a run saved there. ``card``: Trainer's keywords (``language``, ``license``, ``tags``,
        ``finetuned_from``, ...)."""
        check_card_keywords(card)
        # TRL's SFTTrainer writes a card at every checkpoint, the first task's included: nothing to describe yet.
        if not self.is_world_process_zero() or not self.result.accuracy_matrix:
            return
        state = continual_state(self, self.method.state_dict()[0], include_data=False)
        card_text = str(render_model_card(state, self.method.config.base_model_name_or_path, **card))
        atomic_write_text(Path(self.continual_args.output_dir) / "README.md", card_text)

    def push_to_hub(
        self,
        commit_message: Optional[str] = None,
        blocking: bool = True,
        token: Optional[str] = None,
        revision: Optional[str] = None,
        private: Optional[bool] = None,
        *,
        repo_id: Optional[str] = None,
        include_data: bool = False,
        **kwargs,
    ):
        """Upload the continual run (the layout of :meth:`save_continual`, model card included); Trainer's signature.

        ``repo_id`` defaults to ``args.hub_model_id``, then to the output folder's name, as in Trainer. The upload
        carries no training or evaluation data (tasks' evaluation rows, replay buffer) unless ``include_data=True``:
        it serves inference and documents the run; continue a run from its local save. ``kwargs`` are
        ``Trainer.create_model_card``'s (``finetuned_from``, ``dataset_tags``, ``tags``, ``language``, ...) and go into
        the model card.
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if not self.is_world_process_zero():
            return None
        args = self.continual_args
        repo_id = repo_id or args.hub_model_id or Path(args.output_dir).name
        message = commit_message or f"{self.method.name}: {' -> '.join(self.result.task_names)}"
        return push_continual_to_hub(
            self, repo_id, include_data=include_data, card=kwargs, blocking=blocking,
            private=private if private is not None else args.hub_private_repo, token=token or args.hub_token,
            revision=revision or args.hub_revision, commit_message=message,
        )  # fmt: skip

    @classmethod
    def from_continual(
        cls, folder: str, model, args: TrainingArguments, *, processing_class, allow_other_base: bool = False, **kwargs
    ) -> "ContinualTrainerMixin":
        """Continue a run saved by :meth:`save_continual`: ``model`` is a fresh copy of the same base model.

        Adapters, the method's state (replay buffer, merged adapters, ...), the task definitions and the accuracy
        matrix come back; ``train_task``/``train_continual`` then add tasks with the earlier ones frozen. A base
        whose weights differ from the saved run's is refused unless ``allow_other_base=True`` (a deliberate switch).
        """
        peft_model, state, tensors = load_continual_model(folder, model, allow_other_base=allow_other_base)
        options = {**state.get("trainer", {}), **kwargs}
        trainer = cls(model=peft_model, args=args, processing_class=processing_class, **options)
        trainer.method.load_state_dict(state["method_state"], tensors, trainer.peft_model)
        trainer.tasks = [task_from_dict(t) for t in state["tasks"]]
        trainer._adopt_result(ContinualResult.from_dict(state["result"]))
        trainer._cl_load_retention_state(state)
        trainer.restore_adapter_state()
        return trainer

    # ------------------------------------------------------------------------------------------ checkpoints

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Trainer reloads only the first active adapter and makes it trainable; re-assert the method's state."""
        check_folder_is_safe(Path(resume_from_checkpoint), trainer_checkpoint=True)
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        load_method_state(self.method, resume_from_checkpoint, self.peft_model)
        self.restore_adapter_state()


class ContinualTrainer(ContinualTrainerMixin, Trainer):
    """Train a ``PeftModel`` on tasks one after the other with standard ``TrainingArguments``.

    Tasks are encoded by this package (:func:`~peft_continual.tasks.tokenize_task`): the reference prompt or the
    tokenizer's chat template, the loss on the target and end-of-turn only. See :class:`ContinualTrainerMixin` for
    the arguments; with TRL, :class:`~peft_continual.sft_trainer.ContinualSFTTrainer` is the same trainer on
    ``SFTTrainer``.
    """
