"""Scoring a model on a task under a protocol: label ranking, or greedy generation scored by the task's metric.

* ``rank`` (classification only): the option whose tokens (label + EOS/end-of-turn) have the highest
  log-likelihood after the prompt. The prompt is run once per example; its KV cache is repeated for every option,
  so the cost grows with the options' few tokens, not with options x prompt length (and scoring under both
  protocols shares that one run of the prompt: :class:`PromptBatch`).
* ``generate``: batched, left-padded, KV-cached greedy decoding until EOS/end-of-turn or ``max_new_tokens``; the
  answer is scored by the task's metric (the papers' protocol, where format forgetting counts).

Every example's score is kept (for intervals and paired comparisons), and the predictions can be written as JSONL.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import torch
from transformers import GenerationConfig

from .io_utils import atomic_write_text
from .scoring import score_predictions
from .tasks import GENERATION, ContinualTask, EvalEncoding, encode_eval, left_pad, use_chat_template

EvaluationMethod = Literal["rank", "generate"]
EVALUATION_METHODS = ("rank", "generate")
CLASSIFICATION_EXTRA_TOKENS = 2  # generated past the longest label, so a wrong longer answer is seen as such


@dataclass
class TaskEvaluation:
    score: float
    metric: str
    method: str
    num_examples: int
    predictions: list[str]
    example_scores: list[float]

    @property
    def accuracy(self) -> float:
        """The task's score (the name predates per-task metrics)."""
        return self.score


def check_protocol(method: str, task: ContinualTask) -> None:
    if method not in EVALUATION_METHODS:
        raise ValueError(f"evaluation method must be 'rank' or 'generate', got {method!r}")
    if method == "rank" and task.kind == GENERATION:
        raise ValueError(
            f"task {task.name!r} is a generation task: it has no label options to rank; evaluate it with "
            "evaluation_method='generate'"
        )


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def shared_prefix_length(sequences: Sequence[Sequence[int]], limit: Optional[int] = None) -> int:
    """How many first tokens every sequence of a batch (of two or more) has in common, at most ``limit`` and leaving
    each sequence at least one token of its own. Chat templates and task instructions make most of an evaluation
    prompt common to the whole batch (SmolLM2's system turn alone is 30 of the general suite's 37-42 tokens)."""
    if len(sequences) < 2:
        return 0
    first, longest = sequences[0], min(len(s) for s in sequences) - 1
    longest = longest if limit is None else min(longest, limit)
    return next((k for k in range(longest) if any(s[k] != first[k] for s in sequences)), max(longest, 0))


@torch.no_grad()
def forward_shared_prefix(model, sequences: Sequence[Sequence[int]], pad_token_id: int, *, drop_last: bool = False,
                          logits_to_keep: int = 1, limit: Optional[int] = None):  # fmt: skip
    """Run a batch through the model once with a KV cache, the first tokens all sequences share
    (:func:`shared_prefix_length`, at most ``limit``) only once: ``[shared prefix | left padding | rest of each]``.

    The same computation as left-padding the whole sequences (positions count real tokens only), with the common
    part run at batch size 1. ``drop_last``: leave every row's last token out (for ``generate`` to start from).
    Returns ``(ids, mask, positions, output)``: the whole batch's ids, mask and positions, and the model's output
    on the fed tokens (its logits: the last ``logits_to_keep`` of them; None when nothing was fed).
    """
    device = next(model.parameters()).device
    shared = shared_prefix_length(sequences, limit)
    rest_ids, rest_mask = left_pad([s[shared:] for s in sequences], pad_token_id)
    prefix = torch.tensor(list(sequences[0][:shared]), dtype=torch.long).expand(len(sequences), shared)
    ids = torch.cat([prefix, rest_ids], dim=1).to(device)
    mask = torch.cat([torch.ones_like(prefix), rest_mask], dim=1).to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    end = ids.shape[1] - int(drop_last)
    output, cache = None, {}
    with contiguous_head_input(model):
        if shared:
            output = model(input_ids=ids[:1, :shared], position_ids=positions[:1, :shared], use_cache=True,
                           logits_to_keep=1)  # fmt: skip
            key = "cache" if "cache" in output else "past_key_values"  # "cache" since transformers 5.2x
            output[key].batch_repeat_interleave(len(sequences))
            cache = {key: output[key]}
        if end > shared:
            output = model(input_ids=ids[:, shared:end], attention_mask=mask[:, :end],
                           position_ids=positions[:, shared:end], use_cache=True, logits_to_keep=logits_to_keep, **cache)  # fmt: skip
    return ids, mask, positions, output


@contextlib.contextmanager
def contiguous_head_input(model):
    """Hand the output head a contiguous input. Causal LMs apply it to ``hidden[:, -logits_to_keep:]``, a strided
    view, which torch on CPU multiplies as a batched matmul with the head's weight broadcast: 8x slower than the same
    product on a contiguous copy (234 ms against 25 ms on SmolLM2-135M, 64 rows of one position)."""
    head = model.get_output_embeddings()
    if head is None:  # a model that does not expose its head: left as it is
        yield
        return
    handle = head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


@dataclass
class PromptBatch:
    """A left-padded batch of prompts, run through the model once, with their KV cache.

    Ranking alone caches the whole prompt and keeps the next-token distribution after it. To score under both
    protocols, the cache holds all but the last prompt token: ranking feeds that token before each option, and
    ``generate`` needs one uncached token to start from. So one prefill serves both protocols, and scoring a task
    under both costs one pass over its prompts instead of two (the prompts dominate: the answers are a few tokens).
    The batch's common first tokens are run once (:func:`forward_shared_prefix`); the padding then sits after them.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    cache: Any  # transformers' cache of the prefilled tokens; None when none were (one-token prompts)
    cache_key: str  # "cache" since transformers 5.2x, "past_key_values" before
    next_logp: Optional[torch.Tensor] = None  # (B, V) after the whole prompt, when the whole prompt is cached

    @classmethod
    @torch.no_grad()
    def prefill(cls, model, prompts: list[list[int]], pad_token_id: int, *, whole: bool) -> "PromptBatch":
        """Run ``prompts`` (the whole of each, or all but the last token) and keep their cache."""
        ids, mask, positions, out = forward_shared_prefix(model, prompts, pad_token_id, drop_last=not whole)
        if out is None:
            return cls(ids, mask, positions, None, "cache")
        key = "cache" if "cache" in out else "past_key_values"
        return cls(ids, mask, positions, out[key], key, out.logits[:, -1].float().log_softmax(-1) if whole else None)

    def fork(self) -> "PromptBatch":
        """A copy whose cache the caller may consume (extend, repeat) while this one's stays as it is."""
        return dataclasses.replace(self, cache=copy.deepcopy(self.cache))

    def cache_kwargs(self) -> dict[str, Any]:
        return {} if self.cache is None else {self.cache_key: self.cache}


@torch.no_grad()
def rank_batch(model, batch: PromptBatch, options: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """Sum of log-probabilities of each option after each prompt of ``batch`` (whose cache it consumes), shape
    (prompts, options): the cache is repeated once per option and the option's tokens follow it in one pass."""
    device = batch.ids.device
    B, K = batch.ids.shape[0], len(options)
    width = max(len(o) for o in options)
    option_ids = torch.tensor([o + [pad_token_id] * (width - len(o)) for o in options], device=device)  # (K, W)
    option_mask = torch.tensor([[1] * len(o) + [0] * (width - len(o)) for o in options], device=device)
    whole = batch.next_logp is not None  # the option's first token is already predicted: feed the rest
    scores = batch.next_logp[:, option_ids[:, 0]] if whole else torch.zeros(B, K, device=device)
    feed = option_ids[:, :-1].repeat(B, 1)  # (B*K, W-1): every option after every prompt
    if not whole:  # the prompt's last token comes first, before each option
        feed = torch.cat([batch.ids[:, -1:].repeat_interleave(K, 0), feed], dim=1)
    if feed.shape[1] == 0:
        return scores
    if batch.cache is not None:
        batch.cache.batch_repeat_interleave(K)
    feed_mask = torch.cat([batch.mask.repeat_interleave(K, 0), option_mask[:, :-1].repeat(B, 1)], dim=1)
    feed_pos = batch.positions[:, -1:].repeat_interleave(K, 0) + int(whole) + torch.arange(feed.shape[1], device=device)
    logits = model(input_ids=feed, attention_mask=feed_mask, position_ids=feed_pos, **batch.cache_kwargs()).logits
    predicted = option_ids[:, int(whole) :].repeat(B, 1)  # the option tokens the fed positions predict
    logp = logits.float().log_softmax(-1).gather(-1, predicted.unsqueeze(-1)).squeeze(-1)
    return scores + (logp * option_mask[:, int(whole) :].repeat(B, 1)).sum(-1).view(B, K)


def greedy_config(*, pad_token_id: int, stop_ids: list[int], max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
        eos_token_id=stop_ids, pad_token_id=pad_token_id,
    )  # fmt: skip


@torch.no_grad()
def generate_batch(model, batch: PromptBatch, config: GenerationConfig, keep_stop: bool = False) -> list[list[int]]:
    """Greedy continuations of ``batch`` (whose cache ``generate`` extends), each cut before its first stop token
    (``keep_stop``: after it, so that the token that ended it is kept)."""
    out = model.generate(input_ids=batch.ids, attention_mask=batch.mask, generation_config=config, **batch.cache_kwargs())
    stops = set(config.eos_token_id)
    return [row[: next((k + keep_stop for k, token in enumerate(row) if token in stops), len(row))]
            for row in out[:, batch.ids.shape[1] :].tolist()]  # fmt: skip


def default_max_new_tokens(task: ContinualTask, encoding: EvalEncoding) -> int:
    """A classification task: the longest option and a little more. A generation task must carry its own."""
    if task.max_new_tokens is not None:
        return task.max_new_tokens
    if encoding.options is not None:
        return max(len(o) for o in encoding.options) + CLASSIFICATION_EXTRA_TOKENS
    raise ValueError(
        f"task {task.name!r}: pass max_new_tokens (ContinualTrainer sets it from the longest reference)"
    )


@torch.no_grad()
def evaluate_protocols(
    model,
    tokenizer,
    task: ContinualTask,
    methods: Sequence[EvaluationMethod],
    *,
    max_source_length: int = 256,
    batch_size: int = 8,
    max_new_tokens: Optional[int] = None,
    chat_template: str = "auto",
    encoding: Optional[EvalEncoding] = None,
) -> dict[str, TaskEvaluation]:
    """The task's metric on ``task.eval`` under each protocol of ``methods``, from one prefill of each prompt batch
    (the model's current adapters and mode are used as they are). See :func:`evaluate_task` for the arguments."""
    for method in methods:
        check_protocol(method, task)
    if not methods:
        return {}
    if encoding is None:
        encoding = encode_eval(tokenizer, task, max_source_length, use_chat_template(tokenizer, chat_template))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = None
    if "generate" in methods:
        budget = max_new_tokens or default_max_new_tokens(task, encoding)
        config = greedy_config(pad_token_id=pad, stop_ids=encoding.stop_ids, max_new_tokens=budget)
    predictions: dict[str, list[str]] = {method: [] for method in methods}
    for rows in _batches(len(encoding.prompts), batch_size):
        batch = PromptBatch.prefill(model, [encoding.prompts[i] for i in rows], pad, whole=config is None)
        if "rank" in methods:
            best = rank_batch(model, batch.fork() if config else batch, encoding.options, pad).argmax(-1)
            predictions["rank"] += [task.labels[i] for i in best.tolist()]
        if config is not None:
            continuations = generate_batch(model, batch, config)
            predictions["generate"] += [text.strip() for text in tokenizer.batch_decode(continuations, skip_special_tokens=True)]
    evaluations = {}
    for method, answers in predictions.items():
        scores = score_predictions(task.metric, answers, encoding.references)
        evaluations[method] = TaskEvaluation(
            score=sum(scores) / len(scores), metric=task.metric, method=method, num_examples=len(scores),
            predictions=answers, example_scores=scores,
        )  # fmt: skip
    return evaluations


def evaluate_task(
    model,
    tokenizer,
    task: ContinualTask,
    *,
    method: EvaluationMethod = "rank",
    max_source_length: int = 256,
    batch_size: int = 8,
    max_new_tokens: Optional[int] = None,
    chat_template: str = "auto",
    encoding: Optional[EvalEncoding] = None,
) -> TaskEvaluation:
    """The task's metric on ``task.eval`` (the model's current adapters and mode are used as they are).

    ``encoding`` is the task's :func:`~peft_continual.tasks.encode_eval` output, to encode the prompts once for
    many evaluations; ``chat_template`` and ``max_source_length`` only matter when it is not given. To score
    under both protocols, :func:`evaluate_protocols` runs the prompts once for both.
    """
    return evaluate_protocols(
        model, tokenizer, task, [method], max_source_length=max_source_length, batch_size=batch_size,
        max_new_tokens=max_new_tokens, chat_template=chat_template, encoding=encoding,
    )[method]  # fmt: skip


def write_predictions(path, encoding: EvalEncoding, evaluation: TaskEvaluation) -> None:
    """One JSON line per example: prompt, target, prediction, score (written atomically)."""
    lines = (
        json.dumps({"prompt": prompt, "target": target, "prediction": prediction, "score": score}, ensure_ascii=False)
        for prompt, target, prediction, score in zip(
            encoding.prompt_texts, encoding.references, evaluation.predictions, evaluation.example_scores
        )
    )
    atomic_write_text(path, "\n".join(lines) + "\n")
