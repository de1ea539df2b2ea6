"""General self-rehearsal: the base model's own answers to generic chat prompts, replayed while training the tasks.

Replay of task rows keeps the tasks, not the chat model (benchmarks/RESULTS.md: ER ends about as far from the base
as SeqLoRA). Rehearsing what the base itself answers to requests unlike any task keeps the model's behaviour outside
the tasks near the base's, and stores no user row: the rows are written by the base before the first task. The
shipped pool (``data/general/rehearsal_prompts.jsonl``) shares no prompt and no request kind with the retention
suite, so the suite still measures behaviour the rehearsal never showed; a user's pool that repeats a suite prompt
is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from accelerate.utils import broadcast_object_list

from .evaluation import PromptBatch, _batches, generate_batch, greedy_config
from .general_ability import DATA_DIR, SHORT_PROMPT_BATCH, _kept_state, _normalize, chat_prompt_task, suite_prompts
from .replay import ReservoirBuffer
from .tasks import IGNORE_INDEX, PromptEncoder

SHIPPED_POOL = DATA_DIR / "rehearsal_prompts.jsonl"
REHEARSAL_TASK_INDEX = -1  # the task index the rows carry in a replay buffer (no trained task's)


def load_rehearsal_prompts(path: Optional[str] = None) -> list[str]:
    """The pool's prompts: ``path`` (a ``.jsonl`` of ``{"prompt": ...}`` rows, or a text file of one prompt a
    line) or the shipped pool. Duplicates are dropped; a prompt of the retention suite is an error, since
    rehearsing it would make the suite measure what was trained."""
    source = Path(path) if path is not None else SHIPPED_POOL
    if not source.is_file():
        raise FileNotFoundError(
            f"general_prompts={str(source)!r} is not a file: give a .jsonl with a 'prompt' per line or a "
            "text file with one prompt a line, or leave it unset for the shipped pool"
        )
    lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if source.suffix == ".jsonl":
        try:
            prompts = [json.loads(line)["prompt"] for line in lines]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{source}: every line must be a JSON object with a 'prompt' string ({err})") from err
    else:
        prompts = lines
    prompts = list(dict.fromkeys(p.strip() for p in prompts if isinstance(p, str) and p.strip()))
    if not prompts:
        raise ValueError(f"{source} holds no prompt")
    suite = suite_prompts()
    shared = [p for p in prompts if _normalize(p) in suite]
    if shared:
        raise ValueError(
            f"{source}: {len(shared)} prompt(s) are also in the general-ability retention suite (e.g. {shared[:3]!r}); "
            "rehearsing them would make the suite measure what was trained: remove them from the pool"
        )
    return prompts


def pick_prompts(prompts: Sequence[str], n: int, seed: int, what: str = "general_rehearsal_examples") -> list[str]:
    """``n`` prompts of the pool, a seeded uniform draw without replacement (``what``: the setting that asked)."""
    if not 0 < n <= len(prompts):
        raise ValueError(
            f"{what}={n} needs a pool of at least {n} prompts; the pool has {len(prompts)}: lower {what} or give a "
            "larger general_prompts file"
        )
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:n]
    return [prompts[i] for i in order.tolist()]


@torch.no_grad()
def rehearsal_rows(
    peft_model, encoder: PromptEncoder, prompts: Sequence[str], *, batch_size: int, answer_tokens: int
) -> list[dict[str, list[int]]]:
    """Training rows ``{"input_ids", "labels"}``: each prompt in the package's prompt format, then the base model's
    greedy answer (``peft_model`` with its adapters disabled, eval mode) token for token with the token that ended
    it (none when ``answer_tokens`` cut it); labels on the answer only. Kept as generated ids, not re-encoded text:
    re-encoding can change the tokens, and an empty answer (the base ends at once; under the reference prompt
    SmolLM2-135M-Instruct does so for 41 of the quick suite's 64 chat prompts) is behaviour to rehearse as well.
    Callers inside training re-assert their adapter state afterwards (leaving ``disable_adapter()`` can unfreeze)."""
    task = chat_prompt_task()
    prompt_ids = [encoder.prompt(task, {"prompt": p, "context": ""})[1] for p in prompts]
    tokenizer = encoder.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = greedy_config(pad_token_id=pad, stop_ids=encoder.stop_ids(), max_new_tokens=answer_tokens)
    rows = []
    with _kept_state(peft_model), peft_model.disable_adapter():
        peft_model.eval()
        for batch_rows in _batches(len(prompt_ids), batch_size):
            batch = PromptBatch.prefill(peft_model, [prompt_ids[i] for i in batch_rows], pad, whole=False)
            for i, answer in zip(batch_rows, generate_batch(peft_model, batch, config, keep_stop=True)):
                rows.append({"input_ids": prompt_ids[i] + answer, "labels": [IGNORE_INDEX] * len(prompt_ids[i]) + answer})
    return rows


class GeneralRows:
    """The base model's answers to ``n`` prompts of a pool, held for a whole run: prompts picked (and the pool
    checked) before training, answered once before the first task, kept in the run's state so that a resumed or
    continued run never answers them again. A reservoir of capacity ``n``, so that every row stays."""

    META_KEY = "general_rows"

    def __init__(self, n: int, pool: Optional[str], answer_tokens: int, seed: int, what: str):
        self.rows = ReservoirBuffer(n, seed=seed)
        self.n, self.pool, self.answer_tokens, self.seed, self.what = n, pool, answer_tokens, seed, what
        self.prompts: list[str] = []

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def examples(self) -> list[dict]:
        return self.rows.examples

    def check(self) -> None:
        """Read and check the pool and pick the prompts: a bad pool fails here, before any training."""
        if self.n and not len(self.rows):
            self.prompts = pick_prompts(load_rehearsal_prompts(self.pool), self.n, self.seed, self.what)

    def fill(self, trainer, restore_adapter_state: Callable, resumed_meta: Optional[dict] = None) -> None:
        """The base answers the picked prompts, unless the rows are held already or by the checkpoint a task resumes
        from (``resumed_meta``: its method meta; its state is loaded after this). Every process keeps process
        zero's rows."""
        if not self.prompts or len(self.rows) or (resumed_meta or {}).get(self.META_KEY):
            return
        encoder = PromptEncoder(trainer.processing_class, trainer.max_source_length, trainer.chat)
        started = time.perf_counter()
        try:
            rows = rehearsal_rows(trainer.peft_model, encoder, self.prompts,
                                  batch_size=max(trainer.args.per_device_eval_batch_size, SHORT_PROMPT_BATCH),
                                  answer_tokens=self.answer_tokens)  # fmt: skip
        finally:
            restore_adapter_state(trainer.peft_model)
        if trainer.args.world_size > 1:
            rows = broadcast_object_list([rows], from_process=0)[0]
        for row in rows:
            self.rows.add(row["input_ids"], row["labels"], REHEARSAL_TASK_INDEX)
        if trainer.is_world_process_zero():
            ended = sum(len([t for t in row["labels"] if t != IGNORE_INDEX]) == 1 for row in rows)
            print(f"    [{self.what}] the base answered {len(rows)} general prompts ({ended} ended at once) in "
                  f"{time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip

    def sample(self, n: int) -> list[dict]:
        """``n`` rows drawn uniformly (the same draw on every process: same seed)."""
        return self.rows.sample(n)

    def meta(self) -> dict[str, int]:
        """For the method's JSON meta: how many rows its state holds (a resumed task need not answer again)."""
        return {self.META_KEY: len(self.rows)}

    def state_dict(self, prefix: str = "general.") -> dict[str, torch.Tensor]:
        return {prefix + k: v for k, v in self.rows.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], prefix: str = "general.") -> None:
        held = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if held:  # runs saved before general prompts existed hold none
            self.rows.load_state_dict(held)
