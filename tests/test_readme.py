"""The README's code does what the README says."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(heading: str) -> list[str]:
    section = README.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def with_tiny_model(heading: str, tmp_path, tokenizer) -> str:
    """The section's one Python block, loading a tiny model saved in ``tmp_path`` where it names SmolLM2."""
    from conftest import tiny_model

    model, _ = tiny_model("llama", tokenizer)
    model.config.max_position_embeddings = 1024  # whole benchmark prompts, read byte by byte by the test tokenizer
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (code,) = python_blocks(heading)
    code, substitutions = re.subn(r'name = "[^"]+"', f"name = {str(tmp_path / 'model')!r}", code)
    assert substitutions == 1
    return code


def test_python_api_snippet_prints_the_matrix_once_with_forward_transfer(tmp_path, tokenizer, monkeypatch, capsys):
    """Run as written, with a tiny model saved where the snippet loads its model from, and the packaged tasks."""
    code = with_tiny_model("Python API", tmp_path, tokenizer)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PEFT_CONTINUAL_DATA_DIR", raising=False)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.count("Score matrix") == 1 and out.count("AA ") == 1  # the trainer's, not printed again
    assert "FWT n/a" not in out and namespace["result"].forward_transfer is not None
    assert out.strip().splitlines()[-1].startswith("forgot ")
    assert (tmp_path / "out" / "final" / "adapter_model.safetensors").is_file()


def test_trl_snippet_trains_in_memory_chats_with_sfttrainer(tmp_path, tokenizer, monkeypatch):
    """The TRL section's code, run as written with a tiny model where it loads SmolLM2."""
    pytest.importorskip("trl")
    code = with_tiny_model("Training with TRL", tmp_path, tokenizer)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.task_names == ["support", "opposites"] and result.num_trained == 2
    assert result.task_metrics == ["exact_match", "exact_match"] and result.method == "ilora"


def test_general_ability_snippet_reports_every_part_with_intervals(tmp_path, chat_tokenizer, capsys):
    """The general-ability section's code, on a tiny chat model whose adapter moved (as after training)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from conftest import tiny_model

    model, targets = tiny_model("llama", chat_tokenizer)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    code = python_blocks("Is my chat model still a good chat model?")[1]
    before, after = code.split("# ... train ...")
    namespace = {"peft_model": peft_model, "tokenizer": chat_tokenizer}
    exec(compile(before, "README.md", "exec"), namespace)
    with torch.no_grad():  # "training": the adapter moves away from the base
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    exec(compile(after, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert {"instructions", "facts", "leak", "kl", "agreement"} <= set(namespace["after"].summary())
    assert namespace["after"].summary()["kl"] > 0 and "kl: +" in out


def test_retention_snippet_trains_and_reports_the_tracks(tmp_path, tokenizer, capsys):
    """The retention snippet, on a tiny model, with its lm-eval probe left out (ARC needs the network)."""
    from peft import LoraConfig, get_peft_model

    from conftest import synthetic_task, tiny_model, training_args

    code = python_blocks("Is my chat model still a good chat model?")[0]
    assert ', "lm_eval:arc_easy"' in code
    model, targets = tiny_model("llama", tokenizer)
    namespace = {
        "ContinualTrainer": __import__("peft_continual").ContinualTrainer, "tokenizer": tokenizer,
        "peft_model": get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets)),
        "args": training_args(tmp_path, num_train_epochs=2, learning_rate=1e-2),
        "tasks": [synthetic_task("colors"), synthetic_task("animals")], "held_out_task": synthetic_task("fruits"),
    }  # fmt: skip
    exec(compile(code.replace(', "lm_eval:arc_easy"', "").replace('"general"', '"general:3"'), "README.md", "exec"), namespace)
    assert len(namespace["track"].scores) == 3 and namespace["track"].drift() is not None
    assert set(namespace["result"].retention) == {"general/facts", "general/leak", "general/kl", "general/agreement", "fruits"}


def test_adding_a_method_snippet_registers_a_working_method(tmp_path, tokenizer, monkeypatch):
    from peft import get_peft_model

    from conftest import training_args, tiny_model
    from peft_continual import ContinualTrainer, methods

    monkeypatch.setattr(methods.base, "_REGISTRY", dict(methods.base._REGISTRY))  # the snippet registers into a copy
    (code,) = python_blocks("Adding a method")
    namespace = {"__name__": "readme_method"}
    exec(compile(code, "README.md", "exec"), namespace)
    method_class = methods.registered_methods()["l2lora"]
    assert method_class.hyperparameters()[4:] == ["l2_weight"]
    model, targets = tiny_model("llama", tokenizer)
    peft_model = get_peft_model(model, namespace["L2LoraConfig"](r=4, target_modules=targets, l2_weight=0.5))
    trainer = ContinualTrainer(model=peft_model, args=training_args(tmp_path), processing_class=tokenizer)
    assert isinstance(trainer.method, method_class)
    weight, terms = trainer.method.loss_terms(peft_model, {})
    expected = sum((p.float() ** 2).sum() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert weight == 1.0 and abs(terms["loss_l2"].item() - 0.5 * expected.item()) < 1e-5 * expected.item()
