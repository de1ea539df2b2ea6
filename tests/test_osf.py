"""OSF as a continual method: peft's OSF adapter per task, merged into the base, a growing preserved subspace."""

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from conftest import IDS, synthetic_task, tiny_model, training_args
from peft_continual import ContinualOSFConfig, ContinualTrainer
from peft_continual.osf import check_osf_targets, osf_layers


def make_trainer(tokenizer, tmp_path, optim="adamw_torch", learning_rate=5e-3, **config):
    model, targets = tiny_model("llama", tokenizer)
    peft_model = get_peft_model(model, ContinualOSFConfig(target_modules=list(targets), **config))
    args = training_args(tmp_path, num_train_epochs=2, learning_rate=learning_rate, optim=optim)
    return ContinualTrainer(model=peft_model, args=args, processing_class=tokenizer, max_source_length=64)


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("ranks,message", [
    ([], "non-empty list"), ([0], "ints >= 1 or fractions"), ([1, 1.5], "fractions in \\(0, 1\\)"), ("half", "a non-empty list"),
])  # fmt: skip
def test_bad_preserved_ranks(ranks, message):
    with pytest.raises(ValueError, match=message):
        ContinualOSFConfig(target_modules=["q_proj"], preserved_ranks=ranks)
    with pytest.raises(ValueError, match="modules_to_save"):
        ContinualOSFConfig(target_modules=["q_proj"], modules_to_save=["lm_head"])


def test_too_few_ranks_and_quantized_weights_fail_before_training(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, preserved_ranks=[1])
    with pytest.raises(ValueError, match="preserved_ranks lists 1 ranks for 2 tasks"):
        trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    assert not any((tmp_path / "out").iterdir())
    key, layer = osf_layers(trainer.peft_model)[0]
    base = layer.get_base_layer()
    base.weight = torch.nn.Parameter(torch.zeros_like(base.weight, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match=f"OSF cannot train '{key}'.*quantized"):
        check_osf_targets(trainer.peft_model)


def leak_into_preserved(trainer, tokenizer) -> float:
    """Largest share of task 2's update (relative to its largest entry) inside the top singular subspace of the
    weights task 1 left, recomputed here by SVD; also checks that both tasks really trained."""
    method, model = trainer.method, trainer.peft_model
    assert method.merged == ["task_1_colors"] and list(model.peft_config) == ["task_2_animals"]
    assert model.peft_config["task_2_animals"].effective_rank == 0.5  # (t - 1)/T for task 2 of 2
    fresh, _ = tiny_model("llama", tokenizer)
    shares = []
    for key, layer in osf_layers(model):
        merged = method.merged_weights[key]  # the weights after task 1, on which task 2 was decomposed
        assert (merged - fresh.get_parameter(key)).abs().max() > 1e-5  # task 1's update is in the base
        delta = layer.get_delta_weight("task_2_animals").detach()
        assert delta.abs().max() > 1e-6  # task 2 trained
        k = layer.effective_rank["task_2_animals"]
        U, _, Vh = torch.linalg.svd(merged.float(), full_matrices=False)
        leak = max((U[:, :k].T @ delta).abs().max(), (delta @ Vh[:k].T).abs().max())
        shares.append(float(leak / delta.abs().max()))
    return max(shares)


@pytest.mark.parametrize("optim,project,bound", [("adamw_torch", True, 1e-4), ("sgd", False, 1e-4)])
def test_each_task_trains_off_the_subspace_earlier_tasks_wrote(tokenizer, tmp_path, optim, project, bound):
    """The defining behaviour: task 2's update leaves the preserved top subspace of task 1's weights untouched,
    with AdamW when the factors are projected after each step, and with SGD by peft's gradient projection alone."""
    trainer = make_trainer(tokenizer, tmp_path, project_updates=project, optim=optim,
                           learning_rate=5e-3 if optim != "sgd" else 5e-2)  # fmt: skip
    trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    assert leak_into_preserved(trainer, tokenizer) < bound


def test_adam_undoes_peft_gradient_projection(tokenizer, tmp_path):
    """Why project_updates exists: with peft's OSF as shipped and AdamW, part of the update enters the subspace."""
    trainer = make_trainer(tokenizer, tmp_path)
    trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    assert leak_into_preserved(trainer, tokenizer) > 0.05


def test_saved_run_loads_without_peft_and_continues(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path)
    trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    expected = logits(trainer.peft_model)
    trainer.save_continual(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "adapter_model.safetensors").exists()  # no plain-peft root: the base was rewritten
    base, _ = tiny_model("llama", tokenizer)
    base.load_state_dict(load_file(str(tmp_path / "final" / "continual_weights.safetensors")), strict=False)
    assert torch.allclose(logits(base), expected, atol=1e-5)
    assert "continual_weights.safetensors" in (tmp_path / "final" / "README.md").read_text()
    again = ContinualTrainer.from_continual(str(tmp_path / "final"), tiny_model("llama", tokenizer)[0],
                                            training_args(tmp_path / "b", num_train_epochs=1), processing_class=tokenizer)  # fmt: skip
    assert torch.allclose(logits(again.peft_model), expected, atol=1e-5)
    result = again.train_task(synthetic_task("fruits"))
    assert again.method.merged == ["task_1_colors", "task_2_animals"] and result.num_trained == 3


def test_an_upload_carries_the_continual_weights_not_the_training_state(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path)
    trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    trainer.save_continual(str(tmp_path / "upload"), include_data=False)  # what push_to_hub writes
    kept = load_file(str(tmp_path / "upload" / "continual_state.safetensors"))
    assert not any(k.startswith("merged_weights.") for k in kept)
    assert (tmp_path / "upload" / "continual_weights.safetensors").is_file()
