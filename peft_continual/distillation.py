"""LwF's distillation term: the tuned model's next-token distributions are kept close to a teacher's.

On a real vocabulary (49k-150k tokens) a batch's logits are large, so only the compared positions are ever
gathered, cast to float32 and normalised: :func:`distillation_positions` picks them (and lets the LM head run on
them alone), :func:`distillation_kl` takes the KL on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tasks import IGNORE_INDEX


def distillation_positions(
    labels: torch.Tensor, attention_mask: torch.Tensor, positions: str = "targets"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions for the LM head, shared by the batch; per-row mask over them) where the distributions are compared.

    A position ``t`` holds the distribution of token ``t + 1``. ``"prompt"``: positions predicting a prompt token (a
    real token without a label: where the task asks nothing new of the model); ``"targets"``: positions predicting an
    answer token (``labels != IGNORE_INDEX``); ``"all"``: both, padding never. Rows with fewer such positions than
    the union are masked there.
    """
    real = attention_mask.bool()
    real_next = real[:, :-1] & real[:, 1:]
    answer_next = labels[:, 1:] != IGNORE_INDEX
    if positions not in ("prompt", "targets", "all"):
        raise ValueError(f"positions must be 'prompt', 'targets' or 'all', got {positions!r}")
    predicts = {"prompt": real_next & ~answer_next, "targets": answer_next, "all": real_next}[positions]
    keep = predicts.any(0).nonzero().squeeze(-1)
    return keep, predicts[:, keep]


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over masked positions of KL(teacher || student) of the softmax at ``temperature``, times T².

    KL(teacher || student) is cross-entropy to the teacher's soft labels up to a constant, as in LwF (Li & Hoiem);
    T² keeps the gradient's scale independent of T (Hinton et al.). The teacher is detached: gradients reach the
    student only. Logits are ``(..., vocab)`` and ``mask`` their leading shape; only masked rows are cast to float32
    (half-precision log-softmax over a large vocabulary is inexact). No masked position gives 0, still on the graph.
    """
    if student_logits.shape != teacher_logits.shape or mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"expected student and teacher logits of one shape and a mask of their leading shape, got "
            f"{tuple(student_logits.shape)}, {tuple(teacher_logits.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    student = student_logits[mask].float()
    if student.shape[0] == 0:
        return student.sum() * 0.0
    teacher = teacher_logits.detach()[mask].float()
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2
