"""Scoring a model on a task: label ranking (fast, default) or greedy generation with exact match (the papers').

Label ranking picks the option whose tokens (label + EOS) have the highest log-likelihood after the prompt.
The prompt is run once per example; its KV cache is repeated for every option, so the cost grows with the
options' few tokens, not with options x prompt length.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal

import torch

from .tasks import ContinualTask, encode_answer, encode_prompt, left_pad

EvaluationMethod = Literal["rank", "generate"]


@dataclass
class TaskEvaluation:
    accuracy: float
    num_examples: int
    predictions: list[str]


def normalize_answer(text: str) -> str:
    """Lower-case, first line only, no punctuation, articles or extra spaces (SQuAD-style normalisation)."""
    text = text.strip().split("\n")[0].lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


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
def evaluate_task(
    model,
    tokenizer,
    task: ContinualTask,
    *,
    method: EvaluationMethod = "rank",
    max_source_length: int = 256,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> TaskEvaluation:
    """Accuracy of ``model`` on ``task.eval`` (the model's current adapters and mode are used as they are)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts, gold = list(task.eval["text"]), list(task.eval["label"])
    prompts = [encode_prompt(tokenizer, task, t, max_source_length) for t in texts]
    predictions: list[str] = []
    if method == "rank":
        options = [encode_answer(tokenizer, label) for label in task.labels]
        for batch in _batches(len(prompts), batch_size):
            best = rank_scores(model, [prompts[i] for i in batch], options, pad).argmax(-1)
            predictions += [task.labels[i] for i in best.tolist()]
        correct = sum(p == g for p, g in zip(predictions, gold))
    elif method == "generate":
        device = next(model.parameters()).device
        limit = max_new_tokens or max(len(encode_answer(tokenizer, label)) for label in task.labels) + 2
        for batch in _batches(len(prompts), batch_size):
            ids, mask = left_pad([prompts[i] for i in batch], pad)
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=limit,
                do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
            predictions += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        correct = sum(normalize_answer(p) == normalize_answer(g) for p, g in zip(predictions, gold))
    else:
        raise ValueError(f"evaluation method must be 'rank' or 'generate', got {method!r}")
    return TaskEvaluation(accuracy=correct / len(gold), num_examples=len(gold), predictions=predictions)
