"""Reservoir buffer of earlier tasks' training examples, for experience replay.

Examples are stored unpadded on the CPU as token-id lists (``input_ids`` and ``labels``, plus the task index),
so that a replay batch is padded by the same collator as the current batch. The buffer is a uniform sample of
every training example offered so far (Vitter's algorithm R); its whole state, random generator included, is a
dict of tensors that saves to safetensors.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


class ReservoirBuffer:
    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.examples: list[dict[str, Any]] = []
        self.num_seen = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.examples)

    def add(self, input_ids: list[int], labels: list[int], task_index: int) -> None:
        """Offer one example to the reservoir; after n offers each one is inside with probability capacity/n."""
        example = {"input_ids": list(input_ids), "labels": list(labels), "task_index": int(task_index)}
        self.num_seen += 1
        if len(self.examples) < self.capacity:
            self.examples.append(example)
            return
        slot = int(torch.randint(self.num_seen, (1,), generator=self.generator))
        if slot < self.capacity:
            self.examples[slot] = example

    def sample(self, batch_size: int, extra: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """Draw ``batch_size`` examples uniformly from the stored ones and ``extra`` together (rows replayed beside
        the reservoir, e.g. general self-rehearsal's), without replacement when there are enough."""
        pool = self.examples + list(extra)
        if not pool:
            raise RuntimeError("the replay buffer is empty")
        n = len(pool)
        if batch_size <= n:
            indices = torch.randperm(n, generator=self.generator)[:batch_size]
        else:
            indices = torch.randint(n, (batch_size,), generator=self.generator)
        return [pool[i] for i in indices.tolist()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors (safetensors-compatible): concatenated token ids with their lengths, task ids, counters."""
        def flat(key):
            values = [t for e in self.examples for t in e[key]]
            return torch.tensor(values, dtype=torch.int64)

        return {
            "input_ids": flat("input_ids"),
            "labels": flat("labels"),
            "lengths": torch.tensor([len(e["input_ids"]) for e in self.examples], dtype=torch.int64),
            "task_index": torch.tensor([e["task_index"] for e in self.examples], dtype=torch.int64),
            "meta": torch.tensor([self.capacity, self.num_seen], dtype=torch.int64),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        lengths = state["lengths"].tolist()
        if sum(lengths) != state["input_ids"].numel() or state["input_ids"].shape != state["labels"].shape:
            raise ValueError("corrupted replay buffer state: token counts do not match the stored lengths")
        capacity, num_seen = state["meta"].tolist()
        if len(lengths) > capacity or num_seen < len(lengths):
            raise ValueError("corrupted replay buffer state: more examples than capacity or than were seen")
        ids, labels = state["input_ids"].split(lengths), state["labels"].split(lengths)
        self.capacity, self.num_seen = capacity, num_seen
        self.examples = [
            {"input_ids": i.tolist(), "labels": l.tolist(), "task_index": int(t)}
            for i, l, t in zip(ids, labels, state["task_index"].tolist())
        ]
        self.generator.set_state(state["generator"])
