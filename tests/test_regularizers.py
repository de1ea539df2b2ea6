"""The penalties against naive autograd on small shapes and hand-computed values."""

import pytest
import torch

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


def test_chunked_l1_only_materialises_a_chunk(monkeypatch):
    """The largest matmul result is a chunk of rows, never the whole dW."""
    A, B = torch.randn(4, 64), torch.randn(256, 4)
    shapes = []
    real_matmul = torch.Tensor.__matmul__

    def spy(a, b):
        out = real_matmul(a, b)
        shapes.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    delta_w_l1(A, B, 1.0, max_chunk_elements=64 * 16)
    assert shapes and max(shapes) <= 64 * 16


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
