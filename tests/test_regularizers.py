"""The penalties against naive autograd on small shapes and hand-computed values."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from peft_continual.regularizers import delta_w_l1, l2_penalty, orthogonality_penalty, rank_product_l1


def naive_l1(A, B, s):
    return (s * B.float() @ A.float()).abs().sum()


@pytest.mark.parametrize("d_out,d_in,r", [(24, 16, 4), (16, 40, 3), (7, 7, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 37, 10_000])
def test_chunked_l1_matches_naive_value_and_gradients(d_out, d_in, r, dtype, chunk):
    torch.manual_seed(0)
    A = torch.randn(r, d_in, dtype=dtype, requires_grad=True)
    B = torch.randn(d_out, r, dtype=dtype, requires_grad=True)
    value = delta_w_l1(A, B, 0.5, max_chunk_elements=chunk)
    assert value.dtype == torch.float32
    (2.0 * value).backward()  # a non-unit upstream gradient must be applied
    A2, B2 = A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()
    expected = naive_l1(A2, B2, 0.5)
    (2.0 * expected).backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(value, expected, rtol=tol, atol=tol)
    assert A.grad.dtype == dtype and B.grad.dtype == dtype
    torch.testing.assert_close(A.grad.float(), A2.grad.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(B.grad.float(), B2.grad.float(), rtol=tol, atol=tol)


def test_chunked_l1_on_conv1d_layout_equals_transposed_update():
    """GPT-2's Conv1D stores W as (d_in, d_out); dW is transposed, its l1 norm is the same."""
    torch.manual_seed(1)
    A, B = torch.randn(3, 10), torch.randn(6, 3)
    transposed = (2.0 * B @ A).T.abs().sum()
    torch.testing.assert_close(delta_w_l1(A, B, 2.0), transposed)


class _LargestNewTensor(TorchDispatchMode):
    """Records the size of every tensor an aten op returns (views included), forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_chunked_l1_only_materialises_a_chunk():
    """No op, forward or backward, produces a tensor larger than one chunk of dW: the whole dW never exists."""
    A, B = torch.randn(4, 64, requires_grad=True), torch.randn(256, 4, requires_grad=True)
    with _LargestNewTensor() as spy:
        delta_w_l1(A, B, 1.0, max_chunk_elements=64 * 16).backward()
    assert 64 * 16 // 2 < spy.largest <= 64 * 16
    with _LargestNewTensor() as naive:
        naive_l1(A, B, 1.0).backward()
    assert naive.largest == 256 * 64  # the spy sees a materialised dW


def test_chunked_l1_rejects_mismatched_factors():
    with pytest.raises(ValueError, match="expected A"):
        delta_w_l1(torch.randn(4, 8), torch.randn(8, 3), 1.0)


def test_rank_product_equals_l1_of_a_times_b():
    A = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]])  # r=2, d_in=3
    B = torch.tensor([[1.0, 0.0], [2.0, -1.0], [0.0, 3.0]])  # d_out=3, r=2
    # A @ B = [[1-4+0, 0+2+1.5], [0+2+0, 0-1-3]] = [[-3, 3.5], [2, -4]]
    assert rank_product_l1(A, B).item() == pytest.approx(12.5)


def test_rank_product_refuses_non_square_modules_with_the_module_name():
    with pytest.raises(ValueError, match=r"square modules.*layers\.0\.self_attn\.k_proj maps 32 -> 16"):
        rank_product_l1(torch.randn(4, 32), torch.randn(16, 4), "layers.0.self_attn.k_proj")


def test_orthogonality_penalty_hand_computed():
    current = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    previous = [torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0], [3.0, 0.0]])]
    # prev0 @ cur^T = [[3, -1]] ; prev1 @ cur^T = [[4, -2], [3, 0]]
    assert orthogonality_penalty(current, previous, "abs").item() == pytest.approx(3 + 1 + 4 + 2 + 3)
    squared = orthogonality_penalty(current, previous, "squared")
    assert squared.item() == pytest.approx(9 + 1 + 16 + 4 + 9)
    squared.backward()
    assert current.grad is not None and previous[0].grad is None  # earlier tasks stay fixed


def test_l2_penalty_is_sum_of_frobenius_norms():
    assert l2_penalty([torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]).item() == pytest.approx(6.0)


@pytest.mark.parametrize("reduction", ["sqrt_numel", "sum", "mean"])
def test_nlora_reductions_against_naive_delta_w(reduction, tokenizer):
    """lambda * combine(||s B A||_1 per module), with dW built whole on small shapes (Qwen2: k/v are non-square)."""
    from peft import get_peft_model

    from conftest import tiny_model
    from peft_continual import NLoraConfig
    from peft_continual.adapters import adapter_factors
    from peft_continual.methods import build_method

    model, targets = tiny_model("qwen2", tokenizer)
    config = NLoraConfig(r=4, lora_alpha=8, target_modules=set(targets), init_lora_weights=False,
                         collision_lambda=0.3, collision_reduction=reduction)  # fmt: skip
    model = get_peft_model(model, config)
    method = build_method(model)
    method.begin_task(model, 0, "a")
    term = method.loss_terms(model, {})[1]["loss_collision"]
    dws = [f.scaling * f.B.detach().double() @ f.A.detach().double() for f in adapter_factors(model, "task_1_a")]
    assert {tuple(dw.shape) for dw in dws} == {(32, 32), (16, 32)}
    l1 = [dw.abs().sum() for dw in dws]
    expected = {
        "sqrt_numel": sum(n / dw.numel() ** 0.5 for n, dw in zip(l1, dws)),
        "sum": sum(l1),
        "mean": sum(l1) / sum(dw.numel() for dw in dws),
    }[reduction]
    torch.testing.assert_close(term.double(), 0.3 * expected, rtol=1e-5, atol=0)
