"""Scoring a model on a task under a protocol: label ranking, or greedy generation scored by the task's metric.

* ``rank`` (classification only): the option whose tokens (label + EOS/end-of-turn) have the highest
  log-likelihood after the prompt. The prompt is run once per example; its KV cache is repeated for every option,
  so the cost grows with the options' few tokens, not with options x prompt length.
* ``generate``: batched, left-padded, KV-cached greedy decoding until EOS/end-of-turn or ``max_new_tokens``; the
  answer is scored by the task's metric (the papers' protocol, where format forgetting counts).

Every example's score is kept (for intervals and paired comparisons), and the predictions can be written as JSONL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Optional

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


@torch.no_grad()
def rank_scores(model, prompts: list[list[int]], options: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """Sum of log-probabilities of each option after each prompt, shape (len(prompts), len(options))."""
    device = next(model.parameters()).device
    B, K = len(prompts), len(options)
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_token_id))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1)  # (B, V): distribution of each option's first token

    width = max(len(o) for o in options)
    option_ids = torch.tensor([o + [pad_token_id] * (width - len(o)) for o in options], device=device)  # (K, W)
    option_mask = torch.tensor([[1] * len(o) + [0] * (width - len(o)) for o in options], device=device)
    scores = first[:, option_ids[:, 0]]  # (B, K)
    if width > 1:
        cache_key = "cache" if "cache" in out else "past_key_values"  # renamed in transformers 5.2x
        cache = out[cache_key]
        cache.batch_repeat_interleave(K)
        follow_ids = option_ids[:, :-1].repeat(B, 1)  # (B*K, W-1): every option after every prompt
        follow_mask = torch.cat([mask.repeat_interleave(K, 0), option_mask[:, :-1].repeat(B, 1)], dim=1)
        follow_pos = positions[:, -1:].repeat_interleave(K, 0) + 1 + torch.arange(width - 1, device=device)
        logits = model(
            input_ids=follow_ids, attention_mask=follow_mask, position_ids=follow_pos, **{cache_key: cache}
        ).logits.float()
        logp = logits.log_softmax(-1).gather(-1, option_ids[:, 1:].repeat(B, 1).unsqueeze(-1)).squeeze(-1)
        logp = logp * option_mask[:, 1:].repeat(B, 1)
        scores = scores + logp.sum(-1).view(B, K)
    return scores


@torch.no_grad()
def generate_greedy(
    model, prompts: list[list[int]], *, pad_token_id: int, stop_ids: list[int], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """Greedy continuations of left-padded prompt batches (KV-cached), each cut before its first stop token."""
    device = next(model.parameters()).device
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
        eos_token_id=stop_ids, pad_token_id=pad_token_id,
    )  # fmt: skip
    continuations = []
    for batch in _batches(len(prompts), batch_size):
        ids, mask = left_pad([prompts[i] for i in batch], pad_token_id)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row in out[:, ids.shape[1] :].tolist():
            end = next((k for k, token in enumerate(row) if token in stop_ids), len(row))
            continuations.append(row[:end])
    return continuations


def default_max_new_tokens(task: ContinualTask, encoding: EvalEncoding) -> int:
    """A classification task: the longest option and a little more. A generation task must carry its own."""
    if task.max_new_tokens is not None:
        return task.max_new_tokens
    if encoding.options is not None:
        return max(len(o) for o in encoding.options) + CLASSIFICATION_EXTRA_TOKENS
    raise ValueError(
        f"task {task.name!r}: pass max_new_tokens (ContinualTrainer sets it from the longest training target)"
    )


@torch.no_grad()
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
    many evaluations; ``chat_template`` and ``max_source_length`` only matter when it is not given.
    """
    check_protocol(method, task)
    if encoding is None:
        encoding = encode_eval(tokenizer, task, max_source_length, use_chat_template(tokenizer, chat_template))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if method == "rank":
        predictions: list[str] = []
        for batch in _batches(len(encoding.prompts), batch_size):
            best = rank_scores(model, [encoding.prompts[i] for i in batch], encoding.options, pad).argmax(-1)
            predictions += [task.labels[i] for i in best.tolist()]
    else:
        continuations = generate_greedy(
            model, encoding.prompts, pad_token_id=pad, stop_ids=encoding.stop_ids, batch_size=batch_size,
            max_new_tokens=max_new_tokens or default_max_new_tokens(task, encoding),
        )  # fmt: skip
        predictions = [text.strip() for text in tokenizer.batch_decode(continuations, skip_special_tokens=True)]
    scores = score_predictions(task.metric, predictions, encoding.references)
    return TaskEvaluation(
        score=sum(scores) / len(scores), metric=task.metric, method=method, num_examples=len(scores),
        predictions=predictions, example_scores=scores,
    )  # fmt: skip


def write_predictions(path, encoding: EvalEncoding, evaluation: TaskEvaluation) -> None:
    """One JSON line per example: prompt, target, prediction, score (written atomically)."""
    lines = (
        json.dumps({"prompt": prompt, "target": target, "prediction": prediction, "score": score}, ensure_ascii=False)
        for prompt, target, prediction, score in zip(
            encoding.prompt_texts, encoding.references, evaluation.predictions, evaluation.example_scores
        )
    )
    atomic_write_text(path, "\n".join(lines) + "\n")
