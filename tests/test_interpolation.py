"""I-LoRA's EMA and consistency loss."""

import pytest
import torch

from peft_continual.interpolation import consistency_loss, ema_decay_at, ema_update, select_layers


def test_ema_update_is_exact_and_touches_the_slow_weights():
    slow = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    fast = [torch.tensor([3.0, -2.0]), torch.tensor([[10.0]])]
    ema_update(slow, fast, decay=0.75)
    torch.testing.assert_close(slow[0], torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * -2]))
    torch.testing.assert_close(slow[1], torch.tensor([[2.5]]))
    torch.testing.assert_close(fast[0], torch.tensor([3.0, -2.0]))  # the fast learner is untouched


def test_ema_warmup_ramps_linearly():
    assert ema_decay_at(1, 0.9, 10) == pytest.approx(0.09)
    assert ema_decay_at(10, 0.9, 10) == pytest.approx(0.9)
    assert ema_decay_at(3, 0.9, 0) == pytest.approx(0.9)


def test_consistency_is_zero_when_fast_equals_slow():
    h = [torch.randn(2, 5, 4) for _ in range(3)]
    mask = torch.ones(2, 5, dtype=torch.long)
    assert consistency_loss(h, [x.clone() for x in h], mask).item() == 0.0


def test_consistency_ignores_padded_positions_and_matches_hand_value():
    fast = [torch.zeros(1, 3, 2)]
    slow = [torch.tensor([[[1.0, 1.0], [2.0, 0.0], [100.0, 100.0]]])]
    mask = torch.tensor([[1, 1, 0]])
    # real positions: (1+1) + (4+0) = 6 over 2 positions x 2 dims
    assert consistency_loss(fast, slow, mask).item() == pytest.approx(6 / 4)


def test_consistency_max_target_and_gradient_only_to_fast():
    fast = [torch.tensor([[[3.0, -1.0]]], requires_grad=True)]
    slow = [torch.tensor([[[1.0, 1.0]]], requires_grad=True)]
    loss = consistency_loss(fast, slow, torch.ones(1, 1), target="max")  # target = [3, 1]
    assert loss.item() == pytest.approx((0 + 4) / 2)
    loss.backward()
    assert slow[0].grad is None and fast[0].grad is not None


def test_select_layers():
    hidden = [torch.full((1,), float(i)) for i in range(4)]  # embeddings + 3 layers
    assert [t.item() for t in select_layers(hidden, "all")] == [1, 2, 3]
    assert [t.item() for t in select_layers(hidden, "last")] == [3]
    assert [t.item() for t in select_layers(hidden, [1, 3])] == [1, 3]
    with pytest.raises(ValueError, match="out of range"):
        select_layers(hidden, [4])
