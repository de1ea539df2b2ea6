"""Collision analysis against dense computations on small shapes."""

import pytest
import torch

from peft_continual.adapters import LoraFactors
from peft_continual.collision import module_collision_rate, module_nuclear_norm, module_overlap


def factors(seed, d_out=12, d_in=9, r=3, s=2.0):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors("m", torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g), s)


def dense(f):
    return f.scaling * f.B @ f.A


@pytest.mark.parametrize("relative,eps", [(True, 0.3), (False, 2.0)])
def test_collision_rate_matches_dense(relative, eps):
    fi, fj = factors(0), factors(1)
    wi, wj = dense(fi), dense(fj)
    ti = eps * wi.abs().max() if relative else eps
    tj = eps * wj.abs().max() if relative else eps
    expected = ((wi.abs() > ti) & (wj.abs() > tj)).float().mean().item()
    assert 0 < expected < 1
    for chunk in (9, 30, 10_000):
        assert module_collision_rate(fi, fj, eps, relative, max_chunk_elements=chunk) == pytest.approx(expected)


def test_collision_rate_of_disjoint_updates_is_zero():
    A = torch.zeros(1, 4)
    A[0, :2] = 1.0
    B = torch.ones(3, 1)
    A2 = torch.zeros(1, 4)
    A2[0, 2:] = 1.0
    assert module_collision_rate(LoraFactors("m", A, B, 1.0), LoraFactors("m", A2, B, 1.0), 1e-6) == 0.0


def test_overlap_and_nuclear_norm_match_dense():
    fi, fj = factors(2), factors(3)
    assert module_overlap(fi, fj) == pytest.approx(abs((dense(fi) * dense(fj)).sum().item()), rel=1e-5)
    assert module_nuclear_norm(fi) == pytest.approx(torch.linalg.matrix_norm(dense(fi), ord="nuc").item(), rel=1e-5)


def test_collision_report_computes_each_dw_max_once_and_all_eps_in_one_pass(tokenizer, monkeypatch):
    from peft import get_peft_model

    import peft_continual.collision as collision
    from conftest import tiny_model
    from peft_continual import IncLoraConfig

    model, targets = tiny_model("llama", tokenizer)
    names = ["t1", "t2", "t3", "t4"]
    peft_model = get_peft_model(model, IncLoraConfig(r=3, target_modules=set(targets), init_lora_weights=False), adapter_name="t1")
    for name in names[1:]:
        peft_model.add_adapter(name, IncLoraConfig(r=3, target_modules=set(targets), init_lora_weights=False))
    eps = (0.01, 0.1, 0.3, 0.6)
    passes = []
    real = collision._delta_chunks
    monkeypatch.setattr(collision, "_delta_chunks", lambda f, rows: passes.append(f.module_name) or real(f, rows))
    report = collision.collision_report(peft_model, names, eps, max_chunk_elements=50)
    modules, pairs = 4, 6  # q/v in 2 layers; 4 adapters
    assert len(passes) == len(names) * modules + 2 * pairs * modules  # the old code made 4 * pairs * |eps| * modules
    for i, j in [(0, 1), (1, 3)]:  # against dense dW, one eps at a time
        fi = {f.module_name: f for f in collision.adapter_factors(peft_model, names[i])}
        fj = {f.module_name: f for f in collision.adapter_factors(peft_model, names[j])}
        for e in eps:
            expected = []
            for m in fi:
                wi, wj = dense(fi[m]).detach(), dense(fj[m]).detach()
                both = (wi.abs() > e * wi.abs().max()) & (wj.abs() > e * wj.abs().max())
                expected.append(both.float().mean().item())
            assert report["collision_rate"][str(e)][i][j] == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    assert 0 < report["collision_rate"]["0.1"][0][1] < 1


def test_collision_report_runs_on_the_main_process_only(tokenizer, tmp_path, monkeypatch):
    from peft import get_peft_model

    import peft_continual.trainer as trainer_module
    from conftest import synthetic_task, tiny_model, training_args
    from peft_continual import ContinualTrainer, IncLoraConfig

    calls = []
    monkeypatch.setattr(trainer_module, "collision_report", lambda *args, **kwargs: calls.append(args[1]) or {})
    for main in (True, False):
        model, targets = tiny_model("llama", tokenizer)
        trainer = ContinualTrainer(model=get_peft_model(model, IncLoraConfig(r=4, target_modules=set(targets))),
                                   processing_class=tokenizer, args=training_args(tmp_path / str(main)), max_source_length=64)  # fmt: skip
        monkeypatch.setattr(trainer, "is_world_process_zero", lambda: main)
        trainer.train_continual([synthetic_task(n, n_train=4) for n in ("colors", "animals")])
    assert calls == [["task_1_colors", "task_2_animals"]]
