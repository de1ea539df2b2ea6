"""Task-aware serving: a task-adapter method keeps, for each task, the model as it was right after that task."""

import pytest
import torch
from peft import LoraConfig, PeftModel

from conftest import IDS, tiny_model, train
from peft_continual import NLoraConfig
from peft_continual.adapters import adapters_active
from peft_continual.evaluation import evaluate_task


def test_each_task_exports_the_model_as_after_its_training(tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8, collision_lambda=0.5))
    result = trainer.result
    assert result.task_aware and result.task_aware_accuracy == pytest.approx(
        (result.accuracy_matrix[0][0] + result.accuracy_matrix[1][1]) / 2)  # fmt: skip
    assert "Task-aware average accuracy" in result.format_table() and result.to_dict()["task_aware_accuracy"] is not None
    trainer.save_continual(str(tmp_path / "final"))
    assert "Task-aware average accuracy" in (tmp_path / "final" / "README.md").read_text()  # the model card
    folders = sorted(p.name for p in (tmp_path / "final" / "task_aware").iterdir())
    assert folders == ["task_1_colors", "task_2_animals"]
    model = trainer.peft_model.eval()
    for k, folder in enumerate(folders):
        base, _ = tiny_model("llama", tokenizer)
        served = PeftModel.from_pretrained(base, str(tmp_path / "final" / "task_aware" / folder)).eval()  # plain peft
        with torch.no_grad(), adapters_active(model, trainer.method.task_adapters()[: k + 1]):
            expected = model(input_ids=IDS).logits
            task = trainer.tasks[k]
            own = evaluate_task(served, tokenizer, task, method="generate", max_source_length=64, chat_template="off")
        assert torch.allclose(served(input_ids=IDS).logits, expected, atol=1e-5)
        assert own.score == pytest.approx(result.accuracy_matrix[k][k])  # the diagonal is the task-aware score


def test_a_single_adapter_method_keeps_no_task_models(tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, LoraConfig(r=4, lora_alpha=8))
    assert not trainer.result.task_aware and trainer.result.task_aware_accuracy is None
    trainer.save_continual(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "task_aware").exists()
