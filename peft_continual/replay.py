"""Reservoir buffer of earlier tasks' training examples, for experience replay.

Examples are stored unpadded on the CPU as token-id lists (``input_ids`` and ``labels``, plus the task index),
so that a replay batch is padded by the same collator as the current batch. The buffer is a uniform sample of
every training example offered so far (Vitter's algorithm R); its whole state, random generator included, is a
dict of tensors that saves to safetensors.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

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

    def sample(
        self, batch_size: int, extra: Sequence[dict[str, Any]] = (), extra_share: Optional[float] = None
    ) -> list[dict[str, Any]]:
        """Draw ``batch_size`` examples from the stored ones and ``extra`` (rows replayed beside the reservoir, e.g.
        general self-rehearsal's), without replacement within each source when there are enough.

        ``extra_share=None`` draws uniformly from both together, so that ``extra``'s share of a batch is its share of
        the rows. A share in (0, 1] makes each drawn row an ``extra`` one with that probability instead, whatever the
        sizes (all of them while the reservoir is empty), in shuffled order.
        """
        if not self.examples and not extra:
            raise RuntimeError("the replay buffer is empty")
        if extra_share is None or not self.examples or not extra:
            return self._draw(self.examples + list(extra), batch_size)
        from_extra = int((torch.rand(batch_size, generator=self.generator) < extra_share).sum())
        drawn = self._draw(list(extra), from_extra) + self._draw(self.examples, batch_size - from_extra)
        return [drawn[i] for i in torch.randperm(batch_size, generator=self.generator).tolist()]

    def _draw(self, pool: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
        n = len(pool)
        if count <= n:
            indices = torch.randperm(n, generator=self.generator)[:count]
        else:
            indices = torch.randint(n, (count,), generator=self.generator)
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
