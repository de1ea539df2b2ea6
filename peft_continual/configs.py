"""PEFT configs that carry a continual-learning method.

Every config here but OSF's subclasses :class:`peft.LoraConfig` and keeps ``peft_type=LORA``: ``get_peft_model``
builds stock LoRA layers from it and saved adapters load with plain peft (``ContinualOSFConfig`` subclasses peft's
``OSFConfig`` in the same way). The extra fields only tell :class:`~peft_continual.ContinualTrainer` which method to
run and with which hyper-parameters.

Method by config class:

======================  ========================================================================
``LoraConfig``          SeqLoRA: one adapter trained on task after task (no protection)
``IncLoraConfig``       IncLoRA: a new adapter per task; earlier ones frozen and active
``OLoraConfig``         O-LoRA: IncLoRA + orthogonality between the new and earlier ``lora_A``
``NLoraConfig``         N-LoRA: IncLoRA + l1 "collision" penalty on the current task's dW
``ReplayConfig``        ER: one adapter + experience replay from a reservoir buffer
``ILoraConfig``         I-LoRA: ER + a slow learner (EMA of the fast one) + consistency loss
``NLoraReplayConfig``   N-LoRA + ER: N-LoRA's task adapters and penalty, trained with ER's replay
``ContinualOSFConfig``  OSF (peft's ``OSFConfig``): per task, train off the top singular subspace, merge, grow it
``LwfConfig``           LwF: one adapter + a KL to the base model's next-token distributions (no stored data)
``SsrConfig``           SSR: ER whose buffer holds rows the model synthesizes for earlier tasks (no stored rows)
======================  ========================================================================
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft import LoraConfig, OSFConfig


class _ContinualConfigMixin:
    """Make ``XConfig.from_pretrained`` return ``XConfig`` (peft would return a plain ``LoraConfig``)."""

    @classmethod
    def from_peft_type(cls, **kwargs):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in known})

    def to_lora_config(self) -> LoraConfig:
        """The same adapter as a plain ``LoraConfig``, see :func:`as_lora_config`."""
        return as_lora_config(self)


def as_lora_config(config: LoraConfig) -> LoraConfig:
    """The same adapter as a plain ``LoraConfig`` (what a user without this package loads silently), from any subclass."""
    base = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    return LoraConfig(**{k: v for k, v in config.to_dict().items() if k in base})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# General prompts (the base model's answers to generic chat prompts, written before the first task), shared by the
# methods that use them: general self-rehearsal (ER and its kin) and LwF's distillation on general prompts.
def _general_prompts_field():
    return field(
        default=None,
        metadata={
            "help": "The pool of general prompts the base model answers: a .jsonl with a 'prompt' per line or a text "
            "file with one prompt a line. Default: the shipped pool of 240 prompts, disjoint from the retention "
            "suite (a pool sharing a prompt with the suite is refused)."
        },
    )


def _general_answer_tokens_field():
    return field(default=64, metadata={"help": "Token budget of the base model's answer to a general prompt."})


def _check_general_prompts(config, count_field: str) -> None:
    count = getattr(config, count_field)
    _require(isinstance(count, int) and count >= 0, f"{count_field} must be an integer >= 0 (0: off), got {count!r}.")
    _require(
        config.general_prompts is None or isinstance(config.general_prompts, str),
        f"general_prompts must be a file path or None (the shipped pool), got {config.general_prompts!r}.",
    )
    _require(
        isinstance(config.general_answer_tokens, int) and config.general_answer_tokens > 0,
        f"general_answer_tokens must be a positive integer, got {config.general_answer_tokens!r}.",
    )


# init_lora_weights values that change the base weights at every add_adapter (each task, I-LoRA's slow copy).
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "eva", "lora_ga")


def check_base_preserved(config: LoraConfig) -> None:
    """Refuse initialisations that rewrite the base: earlier adapters and the export would refer to a lost base."""
    init = config.init_lora_weights
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise ValueError(
            f"init_lora_weights={init!r} rewrites the base model's weights each time an adapter is added (every task, "
            "I-LoRA's slow learner), so earlier adapters and the saved root adapter would refer to a base that no "
            "longer exists. Use init_lora_weights=True (default), 'gaussian' or 'orthogonal'."
        )


def _check_lora_only(config: LoraConfig, method: str) -> None:
    """The continual methods act on ``lora_A``/``lora_B`` only; refuse variants they would silently ignore."""
    check_base_preserved(config)
    _require(not config.use_dora, f"{method} does not support use_dora=True: set use_dora=False.")
    _require(
        not config.modules_to_save,
        f"{method} does not support modules_to_save={config.modules_to_save!r}: fully trained modules cannot be "
        "kept per task; remove modules_to_save.",
    )


@dataclass
class IncLoraConfig(_ContinualConfigMixin, LoraConfig):
    """IncLoRA: a new LoRA adapter per task, earlier tasks' adapters frozen but active in the forward."""

    merge_finished_adapters: bool = field(
        default=False,
        metadata={
            "help": "Add each finished task's dW into the base weights, so that step cost does not grow with the "
            "number of tasks. Per-task adapters are still kept, saved and exported unchanged. Float32 bases only: "
            "a quantized base is refused, and so is a bf16/fp16 one, whose rounding loses most of a small update."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        _check_lora_only(self, type(self).__name__)


@dataclass
class NLoraConfig(IncLoraConfig):
    """N-LoRA (Yang et al., COLING 2025): IncLoRA plus ``lambda * l1(dW_current)`` to avoid parameter collisions.

    Disjoint entries are not disjoint effects: a sparse later update still acts on an earlier task's inputs, so on
    the benchmark (benchmarks/RESULTS.md) N-LoRA kept less than O-LoRA and peft's OSF.
    """

    collision_lambda: Union[float, list[float]] = field(
        default=0.05,
        metadata={
            "help": "Weight of the collision (l1) penalty on the current task's update. One value for every task, "
            "or one per task in training order. A larger value learns each task less and forgets a little less. "
            "0.05 (with the default 'sqrt_numel' reduction) is from the sweep in benchmarks/RESULTS.md on "
            "SmolLM2-135M-Instruct, Standard CL, scored by generation: on order 1 it gave 3.5 more AA points than the "
            "previous default, 0.2 (interval +0.7 to +6.2). On held-out orders 2 and 3 it tied 0.2 (-0.7 and -0.2 "
            "points, not significant) and forgot more (BWT -5.7 and -3.3 points). If keeping earlier tasks matters "
            "more than learning new ones, use 0.2-0.8. Re-sweep for your data; to move a value to a model of another "
            "size, see collision_reduction."
        },
    )
    collision_form: Literal["delta_w", "rank_product"] = field(
        default="delta_w",
        metadata={
            "help": "'delta_w': entrywise l1 of dW = s*B@A (the paper's form, computed in row chunks). "
            "'rank_product': l1 of the r x r matrix A@B (what the public reference code computes; square modules only, "
            "and far weaker for the same lambda).",
            "choices": ["delta_w", "rank_product"],
        },
    )
    collision_reduction: Literal["sqrt_numel", "sum", "mean"] = field(
        default="sqrt_numel",
        metadata={
            "help": "How the modules' l1 norms combine. 'sqrt_numel': each module's l1 divided by the square root of "
            "its number of entries (an l1 in Frobenius units), summed over modules. 'sum': the plain sum (the "
            "paper's form). 'mean': the sum divided by the entries of all modules, which makes one lambda ~10-60x "
            "weaker at 7B/8B q/v than at SmolLM2 (it shrinks with width and with the number of modules). Measured "
            "ratio of the penalty's gradient to the task loss's gradient on the LoRA factors, 7B/8B shapes vs "
            "SmolLM2-135M (benchmarks/collision_scale.py): 'sqrt_numel' 0.19-0.94x, 'sum' 1.3-11x, 'mean' "
            "0.017-0.13x. No reduction transfers within 2x; to move a lambda to another model, multiply it by the "
            "ratio measured at the old model over the ratio at the new one.",
            "choices": ["sqrt_numel", "sum", "mean"],
        },
    )
    collision_chunk_elements: int = field(
        default=2**22,
        metadata={"help": "Largest number of dW entries materialised at once (bounds the penalty's extra memory)."},
    )

    def __post_init__(self):
        super().__post_init__()
        lambdas = self.collision_lambda if isinstance(self.collision_lambda, list) else [self.collision_lambda]
        _require(len(lambdas) > 0, "collision_lambda: give a number or a non-empty list of numbers.")
        _require(
            all(isinstance(v, (int, float)) and v >= 0 for v in lambdas),
            f"collision_lambda must be >= 0 (one number or one per task), got {self.collision_lambda!r}.",
        )
        _require(
            self.collision_form in ("delta_w", "rank_product"),
            f"collision_form must be 'delta_w' or 'rank_product', got {self.collision_form!r}.",
        )
        _require(
            self.collision_reduction in ("sqrt_numel", "sum", "mean"),
            f"collision_reduction must be 'sqrt_numel', 'sum' or 'mean', got {self.collision_reduction!r}.",
        )
        _require(self.collision_chunk_elements > 0, "collision_chunk_elements must be a positive integer.")

    def lambda_for_task(self, task_index: int) -> float:
        """The collision weight of the ``task_index``-th task (0-based)."""
        if not isinstance(self.collision_lambda, list):
            return float(self.collision_lambda)
        if task_index >= len(self.collision_lambda):
            raise ValueError(
                f"collision_lambda lists {len(self.collision_lambda)} values but task {task_index + 1} is being "
                "trained: give one value per task, or a single number."
            )
        return float(self.collision_lambda[task_index])


@dataclass
class OLoraConfig(IncLoraConfig):
    """O-LoRA (Wang et al., EMNLP 2023 Findings): IncLoRA plus orthogonality of the new ``lora_A`` to earlier ones."""

    orthogonal_lambda: float = field(
        default=0.5,
        metadata={"help": "lambda_1: weight of the orthogonality term between the new and every earlier task's A."},
    )
    orthogonal_form: Literal["abs", "squared"] = field(
        default="abs",
        metadata={
            "help": "'abs': sum of |A_i @ A_t^T| entries (reference code); 'squared': sum of squares (the paper).",
            "choices": ["abs", "squared"],
        },
    )
    l2_lambda: float = field(
        default=0.0,
        metadata={"help": "lambda_2: weight of the sum of l2 norms of the current adapter's parameters."},
    )

    def __post_init__(self):
        super().__post_init__()
        _require(self.orthogonal_lambda >= 0, f"orthogonal_lambda must be >= 0, got {self.orthogonal_lambda}.")
        _require(self.l2_lambda >= 0, f"l2_lambda must be >= 0, got {self.l2_lambda}.")
        _require(
            self.orthogonal_form in ("abs", "squared"),
            f"orthogonal_form must be 'abs' or 'squared', got {self.orthogonal_form!r}.",
        )


@dataclass
class ReplayConfig(_ContinualConfigMixin, LoraConfig):
    """Experience replay (ER): one adapter; from task 2 on every step also trains on a batch from a reservoir buffer."""

    replay_buffer_size: int = field(
        default=500,
        metadata={"help": "Capacity of the reservoir buffer of earlier tasks' training examples (reference: 500)."},
    )
    replay_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Examples replayed per step; default: the per-device training batch size."},
    )
    general_rehearsal_examples: int = field(
        default=0,
        metadata={
            "help": "General self-rehearsal: this many generic chat prompts (from general_prompts) are "
            "answered by the base model before the first task, and those rows are replayed with the buffer's, in "
            "every task from the first, so that the model keeps answering like the base outside the tasks. Stores "
            "no user row. 0: off."
        },
    )
    general_rehearsal_share: Optional[float] = field(
        default=None,
        metadata={
            "help": "Share of each replay batch taken from the general rehearsal rows once the buffer holds task "
            "rows, in (0, 1]. None: drawn uniformly with the buffer's rows, so their share is their share of all "
            "rows: 200 general rows beside 500 stored task rows make 29 %, beside SSR's few synthesized rows most "
            "of the batch (on our benchmark a quarter instead changed neither SSR's tasks nor its general ability)."
        },
    )
    general_prompts: Optional[str] = _general_prompts_field()
    general_answer_tokens: int = _general_answer_tokens_field()

    def __post_init__(self):
        super().__post_init__()
        _check_lora_only(self, type(self).__name__)
        _require(
            isinstance(self.replay_buffer_size, int) and self.replay_buffer_size >= 0,
            f"replay_buffer_size must be an integer >= 0, got {self.replay_buffer_size!r}.",
        )
        _require(
            self.replay_buffer_size > 0 or self.general_rehearsal_examples > 0,
            "replay_buffer_size=0 keeps no task row, so there is nothing to replay: set replay_buffer_size > 0, or "
            "general_rehearsal_examples > 0 to replay the base model's answers to general prompts only.",
        )
        _require(
            self.replay_batch_size is None or self.replay_batch_size > 0,
            f"replay_batch_size must be > 0 (or None for the training batch size), got {self.replay_batch_size}.",
        )
        _check_general_prompts(self, "general_rehearsal_examples")
        share = self.general_rehearsal_share
        _require(
            share is None or (isinstance(share, (int, float)) and 0 < share <= 1),
            f"general_rehearsal_share must be in (0, 1] or None (the rows' own share), got {share!r}.",
        )
        _require(
            share is None or self.general_rehearsal_examples > 0,
            f"general_rehearsal_share={share} needs general_rehearsal_examples > 0: there are no general rows to "
            "replay.",
        )


@dataclass
class GeneralRehearsalConfig(ReplayConfig):
    """General self-rehearsal alone: one adapter trained task after task, each step also replaying the base model's
    own answers to generic chat prompts (written before the first task). Keeps no task row: for replay of task rows
    as well, use ``ReplayConfig`` (or ``SsrConfig``, data-free) with ``general_rehearsal_examples``."""

    replay_buffer_size: int = field(
        default=0, metadata={"help": "Must stay 0: this method keeps no task row (see the class docstring)."}
    )
    general_rehearsal_examples: int = field(
        default=200,
        metadata={"help": "Generic chat prompts answered by the base model and replayed in every task (> 0)."},
    )

    def __post_init__(self):
        super().__post_init__()
        _require(
            self.replay_buffer_size == 0,
            f"GeneralRehearsalConfig keeps no task row, got replay_buffer_size={self.replay_buffer_size}: use "
            "ReplayConfig(general_rehearsal_examples=...) to replay task rows and general rows together.",
        )


@dataclass
class ILoraConfig(ReplayConfig):
    """I-LoRA (Ren et al., 2024): a fast and a slow (EMA) learner, replay, and a consistency loss."""

    ema_decay: float = field(
        default=0.9,
        metadata={
            "help": "lambda: weight the slow learner keeps at each step, slow <- lambda*slow + (1-lambda)*fast. "
            "The slow learner lags the fast one by about 1/(1-lambda) steps, which must be well below the steps per "
            "task. The default comes from the sweeps in benchmarks/RESULTS.md on SmolLM2-135M-Instruct: at 8-28 steps "
            "per task 0.9 beat the reference code's 0.25 and mean-teacher practice's 0.99; at 32-112 steps per task "
            "0.7 lost 3.4 AA points and 0.97 kept more but learned less (1.9 AA points fewer, not significant). "
            "Raise it for tasks of thousands of steps."
        },
    )
    ema_warmup_steps: int = field(
        default=0,
        metadata={"help": "Ramp the decay linearly from 0 to ema_decay over the first steps of each task."},
    )
    consistency_weight: float = field(
        default=0.1,
        metadata={
            "help": "gamma: weight of the consistency (MSE) loss on replayed samples. The MSE is averaged over the "
            "compared layers but not normalised by the hidden states' scale (on SmolLM2 it reached 8x the task loss at "
            "the start of a task with gamma=1, the reference value); 0.1 is the default from the sweeps in "
            "benchmarks/RESULTS.md: at 32-112 steps per task gamma=1 lost 5.2 AA points against it and 0.01 1.5 "
            "(within noise)."
        },
    )
    consistency_layers: Union[str, list[int]] = field(
        default="all",
        metadata={"help": "Hidden states compared: 'all' layers, the 'last', or a list of layer indices (1-based)."},
    )
    consistency_target: Literal["slow", "max"] = field(
        default="slow",
        metadata={
            "help": "Target of the consistency loss: the slow learner's hidden states, or the reference code's "
            "elementwise max(fast, slow).",
            "choices": ["slow", "max"],
        },
    )
    eval_learner: Literal["slow", "fast"] = field(
        default="slow",
        metadata={"help": "Learner used for evaluation and exported as the root adapter.", "choices": ["slow", "fast"]},
    )
    resync_slow_at_task_end: bool = field(
        default=False, metadata={"help": "Copy the fast learner into the slow one at the end of every task."}
    )

    def __post_init__(self):
        super().__post_init__()
        _require(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}.")
        _require(self.ema_warmup_steps >= 0, f"ema_warmup_steps must be >= 0, got {self.ema_warmup_steps}.")
        _require(self.consistency_weight >= 0, f"consistency_weight must be >= 0, got {self.consistency_weight}.")
        layers = self.consistency_layers
        _require(
            layers in ("all", "last") or (isinstance(layers, list) and layers and all(isinstance(i, int) for i in layers)),
            f"consistency_layers must be 'all', 'last' or a non-empty list of layer indices, got {layers!r}.",
        )
        _require(
            self.consistency_target in ("slow", "max"),
            f"consistency_target must be 'slow' or 'max', got {self.consistency_target!r}.",
        )
        _require(self.eval_learner in ("slow", "fast"), f"eval_learner must be 'slow' or 'fast', got {self.eval_learner!r}.")


@dataclass
class ContinualOSFConfig(_ContinualConfigMixin, OSFConfig):
    """OSF over a task sequence, on peft's ``OSFConfig``: each task trains the complement of the weights' top
    singular directions, then is merged into the base, and the next task freezes a larger top subspace.

    Not a LoRA: the continual model is the base with rewritten target weights, so its saved root is
    ``continual_weights.safetensors`` (the target modules' weights), not a plain-peft adapter.
    """

    preserved_ranks: Optional[list[Union[int, float]]] = field(
        default=None,
        metadata={
            "help": "Frozen (preserved) rank of each task's OSF adapter, as peft's effective_rank: an int, or a "
            "fraction in (0, 1) of each matrix's smaller dimension; non-decreasing, one per task. Default: 1 for "
            "the first task, then (t - 1)/T for task t of T (peft's docs' budget allocation, as the benchmark ran it)."
        },
    )

    project_updates: bool = field(
        default=False,
        metadata={
            "help": "After every optimizer step, project the trainable factors back off the preserved subspace. peft "
            "only projects gradients, which Adam's per-coordinate scaling undoes (a sizeable part of each update then "
            "lands in the preserved directions); True keeps them untouched with any optimizer. Default False: peft's "
            "OSF as shipped, as the benchmark measured it."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        _require(not self.modules_to_save, f"OSF does not support modules_to_save={self.modules_to_save!r}: remove it.")
        ranks = self.preserved_ranks
        if ranks is not None:
            _require(
                isinstance(ranks, list) and ranks and all(
                    (isinstance(r, int) and not isinstance(r, bool) and r >= 1) or (isinstance(r, float) and 0 < r < 1)
                    for r in ranks),
                f"preserved_ranks must be a non-empty list of ints >= 1 or fractions in (0, 1), got {ranks!r}.",
            )  # fmt: skip


@dataclass
class NLoraReplayConfig(NLoraConfig, ReplayConfig):
    """N-LoRA + ER: N-LoRA's task adapters and collision penalty, each step also trained on a replay batch.

    Not a published method: the composition for when the penalty alone keeps the answer format but not every
    earlier decision. Its fields are N-LoRA's and ER's, with their defaults and meanings. Measured once
    (benchmarks/RESULTS.md, order 1): replay cut N-LoRA's forgetting, but the pair learned each task less and
    stayed behind plain ER in average accuracy, so prefer ``ReplayConfig`` or ``ILoraConfig`` when data can be kept.
    """


@dataclass
class LwfConfig(_ContinualConfigMixin, LoraConfig):
    """LwF (Li & Hoiem, 2016) with the base model as teacher: one adapter trained task after task (as SeqLoRA),
    plus a KL that keeps its next-token distributions close to the base model's. Nothing is stored between tasks:
    the teacher is the same model with its adapter disabled."""

    distill_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the distillation term, KL(base || tuned) of the next-token distributions, added to "
            "the task loss. Larger keeps the model closer to the base (less forgetting, less learning); 0 trains "
            "as SeqLoRA."
        },
    )
    distill_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Softmax temperature T of both distributions; the KL is multiplied by T^2 so that its gradient "
            "keeps its scale. T > 1 also matches the base's less likely tokens."
        },
    )
    distill_positions: Literal["prompt", "targets", "all"] = field(
        default="prompt",
        metadata={
            "help": "Positions where the KL is taken: 'prompt', those predicting the current task's prompt tokens (the "
            "model keeps the base's behaviour on the task's text while the task loss teaches the answers: no "
            "conflict); 'targets', those predicting the answer tokens (a direct pull against the task loss: on the "
            "benchmark at weight 1 it learned the tasks worst); 'all', both (the LM head then runs on whole sequences).",
            "choices": ["prompt", "targets", "all"],
        },
    )

    distill_general_examples: int = field(
        default=0,
        metadata={
            "help": "Also take the KL (same weight and temperature) on the base model's own answers to this many "
            "general prompts (general_prompts; written before the first task), a batch of them each step, so that "
            "the model keeps the base's distributions outside the tasks too. Stores no user row. 0: off."
        },
    )
    general_prompts: Optional[str] = _general_prompts_field()
    general_answer_tokens: int = _general_answer_tokens_field()

    def __post_init__(self):
        super().__post_init__()
        _check_lora_only(self, type(self).__name__)
        _check_general_prompts(self, "distill_general_examples")
        _require(
            math.isfinite(self.distill_weight) and self.distill_weight >= 0,
            f"distill_weight must be a finite number >= 0, got {self.distill_weight!r}: set distill_weight=0 to "
            "train without distillation, or a positive weight.",
        )
        _require(
            math.isfinite(self.distill_temperature) and self.distill_temperature > 0,
            f"distill_temperature must be a finite number > 0, got {self.distill_temperature!r}: use 1.0 for the "
            "plain distributions, or more to soften them.",
        )
        _require(
            self.distill_positions in ("prompt", "targets", "all"),
            f"distill_positions must be 'prompt', 'targets' or 'all', got {self.distill_positions!r}.",
        )


@dataclass
class SsrConfig(ReplayConfig):
    """SSR (Huang et al., ACL 2024): ER without data. After each task the model writes new inputs for it from its
    instruction, answers them itself, and the well-formed, diverse pairs join the replay buffer, replayed in every
    later task; no user row is stored. ``replay_buffer_size`` caps the synthetic rows of all earlier tasks together
    (a reservoir, as ER's)."""

    ssr_examples_per_task: int = field(
        default=32, metadata={"help": "Synthetic rows kept per task (at most)."}
    )
    ssr_candidates_factor: float = field(
        default=2.0,
        metadata={
            "help": "Inputs sampled per task, as a multiple of ssr_examples_per_task (room for the filter)."
        },
    )
    ssr_temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of synthetic inputs."})
    ssr_top_p: float = field(default=0.95, metadata={"help": "Top-p of synthetic inputs' sampling."})
    ssr_max_new_tokens: int = field(
        default=64, metadata={"help": "Token budget of a synthetic input; longer ones are dropped."}
    )
    ssr_min_input_chars: int = field(
        default=3, metadata={"help": "Shortest synthetic input kept, in characters."}
    )
    ssr_inputs_from: Literal["base", "current"] = field(
        default="base",
        metadata={
            "help": "Which model writes the synthetic inputs: 'base' (its adapters disabled, as the SSR paper's base "
            "LLM; it has taken on no task's answer format) or 'current' (the model as the previous task left it). "
            "The answers are always the current model's. Measured on the benchmark (SmolLM2-135M-Instruct, reference "
            "prompt): after dbpedia the current model's 64 candidates for it gave 0 usable rows.",
            "choices": ["base", "current"],
        },
    )
    ssr_resynthesize: bool = field(
        default=False,
        metadata={
            "help": "False (the SSR paper's procedure): each task's rows are synthesized once, before the next task, "
            "answered by the model that has just learned it, and kept in the buffer for every later task: one "
            "synthesis per task. True: before every task the rows of every earlier task are synthesized again and "
            "answered by the current model, so a task it has begun to forget is rehearsed with its forgetful answers, "
            "and the cost grows with the number of earlier tasks (this library's SSR until the benchmark compared "
            "the two: benchmarks/RESULTS.md)."
        },
    )
    ssr_demonstrations: int = field(
        default=0,
        metadata={
            "help": "Real inputs of an earlier task shown as examples when synthesizing; > 0 reads user rows again, "
            "so it needs ssr_allow_real_demonstrations."
        },
    )
    ssr_allow_real_demonstrations: bool = field(
        default=False,
        metadata={
            "help": "Opt in to ssr_demonstrations > 0 (real rows read, never stored or replayed)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        _require(
            isinstance(self.ssr_examples_per_task, int) and self.ssr_examples_per_task > 0,
            f"ssr_examples_per_task must be a positive integer, got {self.ssr_examples_per_task!r}.",
        )
        _require(
            math.isfinite(self.ssr_candidates_factor) and self.ssr_candidates_factor >= 1,
            f"ssr_candidates_factor must be a finite number >= 1 (candidates per kept row), got {self.ssr_candidates_factor!r}.",
        )
        _require(
            math.isfinite(self.ssr_temperature) and self.ssr_temperature > 0,
            f"ssr_temperature must be a finite number > 0, got {self.ssr_temperature!r}.",
        )
        _require(0 < self.ssr_top_p <= 1, f"ssr_top_p must be in (0, 1], got {self.ssr_top_p!r}.")
        _require(
            isinstance(self.ssr_max_new_tokens, int) and self.ssr_max_new_tokens > 0,
            f"ssr_max_new_tokens must be a positive integer, got {self.ssr_max_new_tokens!r}.",
        )
        _require(
            isinstance(self.ssr_min_input_chars, int) and self.ssr_min_input_chars >= 1,
            f"ssr_min_input_chars must be an integer >= 1, got {self.ssr_min_input_chars!r}.",
        )
        _require(
            self.ssr_inputs_from in ("base", "current"),
            f"ssr_inputs_from must be 'base' or 'current', got {self.ssr_inputs_from!r}.",
        )
        _require(
            isinstance(self.ssr_resynthesize, bool),
            f"ssr_resynthesize must be True or False, got {self.ssr_resynthesize!r}.",
        )
        _require(
            isinstance(self.ssr_demonstrations, int) and self.ssr_demonstrations >= 0,
            f"ssr_demonstrations must be an integer >= 0, got {self.ssr_demonstrations!r}.",
        )
        _require(
            self.ssr_demonstrations == 0 or self.ssr_allow_real_demonstrations,
            f"ssr_demonstrations={self.ssr_demonstrations} shows real training rows of earlier tasks to the model at "
            "every task, which SSR exists to avoid: set ssr_allow_real_demonstrations=True to opt in explicitly, or "
            "ssr_demonstrations=0.",
        )
