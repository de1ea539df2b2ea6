"""Reservoir buffer: uniform inclusion, sampling, state round trip."""

import pytest
import torch

from peft_continual.replay import ReservoirBuffer


def test_reservoir_inclusion_is_uniform():
    n, capacity, trials = 40, 10, 2000
    counts = torch.zeros(n)
    for seed in range(trials):
        buffer = ReservoirBuffer(capacity, seed=seed)
        for i in range(n):
            buffer.add([i], [i], task_index=0)
        assert len(buffer) == capacity
        for e in buffer.examples:
            counts[e["input_ids"][0]] += 1
    expected = trials * capacity / n  # 500 per example
    # binomial sd = sqrt(2000 * 0.25 * 0.75) ~ 19.4; 5 sd
    assert (counts - expected).abs().max() < 5 * (trials * 0.25 * 0.75) ** 0.5
    # chi-square over 40 cells (39 dof): 99.9th percentile ~ 72
    assert (((counts - expected) ** 2) / expected).sum() < 72


def test_sample_without_replacement_when_possible():
    buffer = ReservoirBuffer(5, seed=0)
    for i in range(5):
        buffer.add([i, i], [-100, i], task_index=i)
    batch = buffer.sample(5)
    assert sorted(e["input_ids"][0] for e in batch) == list(range(5))
    assert len(buffer.sample(12)) == 12


def test_state_dict_round_trip_including_random_state():
    buffer = ReservoirBuffer(3, seed=7)
    for i in range(10):
        buffer.add(list(range(i + 1)), [-100] * i + [i], task_index=i % 2)
    restored = ReservoirBuffer(1, seed=0)
    restored.load_state_dict(buffer.state_dict())
    assert restored.examples == buffer.examples and restored.num_seen == 10 and restored.capacity == 3
    assert restored.sample(2) == buffer.sample(2)  # same generator state


def test_corrupted_state_is_refused():
    buffer = ReservoirBuffer(3)
    buffer.add([1, 2], [1, 2], 0)
    state = buffer.state_dict()
    state["lengths"] = torch.tensor([5])
    with pytest.raises(ValueError, match="corrupted replay buffer"):
        ReservoirBuffer(3).load_state_dict(state)


def test_empty_buffer_cannot_be_sampled():
    with pytest.raises(RuntimeError, match="empty"):
        ReservoirBuffer(2).sample(1)
