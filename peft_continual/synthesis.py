"""Self-Synthesized Rehearsal (SSR, Huang et al., ACL 2024): rehearsal rows for an earlier task, written by the model.

Where no training row may be kept (privacy, licences), the model stands in for the replay buffer: once a task is
learned, the base model (or, if asked, the trained one) writes new inputs for it from its instruction (and label
set), the model that has just learned it answers them in the task's own prompt format, and the well-formed, diverse
pairs are replayed in later tasks as experience replay replays real rows. One function per step, so each is
testable alone: :func:`sample_candidates` (sampling), :func:`filter_candidates` (plain strings, no model) and
:func:`label_inputs` (greedy answers); :func:`synthesize_rows` chains them.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from typing import Callable, ContextManager, NamedTuple, Optional, Sequence

import torch
from transformers import GenerationConfig

from .evaluation import CLASSIFICATION_EXTRA_TOKENS, PromptBatch, _batches, generate_batch, greedy_config
from .tasks import GENERATION, ContinualTask, PromptEncoder
from .tasks.prompts import chat_frame

INPUT_MARKER = "Input:"
# Where a candidate input ends: the model going on to another demonstration, or to an answer or output field (the
# reference tail; a base model also writes "Output:").
_CANDIDATE_ENDS = re.compile(r"\n\s*(?:Input|Output|Answer|Label)\s*:")
_MIN_ECHO_WORDS = 3  # a request line this long found inside a candidate means the candidate repeats the request


class Candidate(NamedTuple):
    """A sampled input; ``finished`` is False when the token budget cut it (an unfinished input is too long)."""

    text: str
    finished: bool = True


def synthesis_request(task: ContinualTask, demonstrations: Sequence[str] = ()) -> str:
    """The request for one new input of ``task``: its instruction, its options (classification: inputs that fit
    the label set) and, only when given, real inputs as demonstrations. The reference (non-chat) form ends with the
    marker the input follows; in a chat the reply is the input."""
    lines = [task.instruction.strip() or f"Task: {task.name}"]
    if task.kind != GENERATION:
        lines.append("Options: " + ", ".join(task.labels))
    lines.append("Write one new input for this task, unlike any example. Reply with the input only, without its answer.")
    lines += [f"{INPUT_MARKER} {text}" for text in demonstrations]
    return "\n".join(lines)


def request_ids(encoder: PromptEncoder, request: str) -> list[int]:
    """The request as a prompt, rendered as the package renders a task's prompts (chat template or prefix)."""
    if encoder.chat:
        text = chat_frame(encoder.tokenizer, [{"role": "user", "content": request}])[0]
    else:
        text = f"{request}\n{INPUT_MARKER}"
    return encoder.prefix + encoder.tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def sample_candidates(
    model, encoder: PromptEncoder, request: str, n: int, *, temperature: float, top_p: float, max_new_tokens: int,
    batch_size: int, seed: int,
) -> list[Candidate]:  # fmt: skip
    """``n`` sampled continuations of the request, batched with a KV cache, each stopped at end of turn/EOS.

    Seeded inside a forked random state: the same seed gives the same candidates, and the run's own random stream
    (adapter initialisation, data order) is left as it would be without synthesis.
    """
    tokenizer = encoder.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = encoder.stop_ids()
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p, top_k=0, num_beams=1,
        use_cache=True, eos_token_id=stops, pad_token_id=pad,
    )  # fmt: skip
    prompt = request_ids(encoder, request)
    device = next(model.parameters()).device
    candidates = []
    with torch.random.fork_rng(devices=[device] if device.type != "cpu" else [], device_type=device.type):
        torch.manual_seed(seed)
        for rows in _batches(n, batch_size):
            batch = PromptBatch.prefill(model, [prompt] * len(rows), pad, whole=False)
            out = model.generate(input_ids=batch.ids, attention_mask=batch.mask, generation_config=config,
                                 **batch.cache_kwargs())  # fmt: skip
            for row in out[:, batch.ids.shape[1] :].tolist():
                end = next((k for k, token in enumerate(row) if token in stops), None)
                text = tokenizer.decode(row[:end], skip_special_tokens=True)
                candidates.append(Candidate(text, finished=end is not None))
    return candidates


def normalise(text: str) -> str:
    """Case, punctuation and spacing removed: inputs differing only there are the same input."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def filter_candidates(
    candidates: Sequence[Candidate], *, request: str, min_chars: int, user_texts: Sequence[str] = ()
) -> list[str]:
    """The usable inputs among ``candidates``, in order.

    Each is cut where the model goes on to another input or an answer, and stripped; dropped when empty, shorter
    than ``min_chars``, unfinished (too long), a repeat of the request (echoed, or holding one of its lines), a
    duplicate of an earlier kept one (diversity), or identical to a user row in ``user_texts`` (a rehearsal row must
    never be a user's row, even one shown as a demonstration).
    """
    prompt = f" {normalise(request)} "  # spaces around: words match whole, never inside another word
    echoes = [f" {line} " for line in map(normalise, request.splitlines()) if len(line.split()) >= _MIN_ECHO_WORDS]
    seen = {normalise(text) for text in user_texts}
    kept = []
    for candidate in candidates:
        text = _CANDIDATE_ENDS.split(candidate.text, maxsplit=1)[0].strip()
        key = normalise(text)
        if not candidate.finished or len(text) < min_chars or not key:
            continue
        if f" {key} " in prompt or any(line in f" {key} " for line in echoes) or key in seen:
            continue
        seen.add(key)
        kept.append(text)
    return kept


@torch.no_grad()
def label_inputs(
    model, encoder: PromptEncoder, task: ContinualTask, inputs: Sequence[str], *, batch_size: int, answer_tokens: int,
    limit: Optional[int] = None,
) -> list[dict[str, str]]:  # fmt: skip
    """Rows in ``task``'s own format for the inputs the model answers well-formed, greedy, in the task's prompt
    (the first ``limit`` such rows: later batches are not run).

    A classification answer must be one of the labels exactly (as the generate protocol scores it); a generation
    answer must be non-empty. ``answer_tokens`` bounds a generation answer; a label's budget is the longest option
    and a little more, as in evaluation.
    """
    if not inputs:
        return []
    generation = task.kind == GENERATION
    rows = [{"prompt": text, "context": ""} if generation else {"text": text} for text in inputs]
    encoded = [encoder.prompt(task, row) for row in rows]
    budget = answer_tokens
    if not generation:
        text, ids = encoded[0]
        budget = max(len(encoder.target(task, {"label": label}, text, ids)) for label in task.labels)
        budget += CLASSIFICATION_EXTRA_TOKENS
    tokenizer = encoder.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = greedy_config(pad_token_id=pad, stop_ids=encoder.stop_ids(), max_new_tokens=budget)
    labelled = []
    for batch_rows in _batches(len(rows), batch_size):
        if limit is not None and len(labelled) >= limit:
            break
        batch = PromptBatch.prefill(model, [encoded[i][1] for i in batch_rows], pad, whole=False)
        answers = tokenizer.batch_decode(generate_batch(model, batch, config), skip_special_tokens=True)
        for i, answer in zip(batch_rows, answers):
            answer = answer.strip()
            if generation and answer:
                labelled.append({**rows[i], "completion": answer})
            elif not generation and answer in task.labels:
                labelled.append({**rows[i], "label": answer})
    return labelled[:limit]


def synthesize_rows(
    model, encoder: PromptEncoder, task: ContinualTask, n_keep: int, *, candidates_factor: float, temperature: float,
    top_p: float, max_new_tokens: int, min_chars: int, batch_size: int, seed: int, answer_tokens: int,
    demonstrations: Sequence[str] = (), writer: Optional[Callable[[], ContextManager]] = None,
) -> tuple[list[dict[str, str]], dict[str, float]]:  # fmt: skip
    """Up to ``n_keep`` rehearsal rows for ``task`` from ``ceil(n_keep * candidates_factor)`` sampled inputs (one
    round: the cost is bounded), with the cost: candidates, finished, filtered (usable inputs), kept, seconds.

    ``writer``: a context in which ``model`` writes the inputs (e.g. its adapters disabled: the base model, as in the
    SSR paper); the answers are always the model's as called."""
    started = time.perf_counter()
    request = synthesis_request(task, demonstrations)
    n = math.ceil(n_keep * candidates_factor)
    with (writer or contextlib.nullcontext)():
        candidates = sample_candidates(model, encoder, request, n, temperature=temperature, top_p=top_p,
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)  # fmt: skip
    inputs = filter_candidates(candidates, request=request, min_chars=min_chars, user_texts=demonstrations)
    rows = label_inputs(model, encoder, task, inputs, batch_size=batch_size, answer_tokens=answer_tokens, limit=n_keep)
    cost = {
        "candidates": n, "finished": sum(c.finished for c in candidates), "filtered": len(inputs), "kept": len(rows),
        "seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip
    return rows, cost
