"""Saving, loading with plain peft, continuing later, model card and upload, safety of loading."""

import json
import pickle
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from conftest import synthetic_task, tiny_model, training_args
from peft_continual import ContinualTrainer, IncLoraConfig, ILoraConfig, NLoraConfig, ReplayConfig
from peft_continual.adapters import adapter_parameters, adapters_active
from peft_continual.hub import push_folder_to_hub
from peft_continual.persistence import ContinualStateError

IDS = torch.tensor([[5, 9, 14, 3, 7, 2]])


def train(tokenizer, tmp_path, config, names=("colors", "animals"), epochs=2):
    model, targets = tiny_model("llama", tokenizer)
    config.target_modules = config.target_modules or set(targets)
    trainer = ContinualTrainer(
        model=get_peft_model(model, config), processing_class=tokenizer, max_source_length=64,
        args=training_args(tmp_path, num_train_epochs=epochs, learning_rate=1e-2),
    )  # fmt: skip
    trainer.train_continual([synthetic_task(n, n_train=8) for n in names])
    return trainer


def continual_logits(trainer):
    model = trainer.peft_model.eval()
    with torch.no_grad(), adapters_active(model, trainer.method.eval_adapters()):
        return model(input_ids=IDS).logits


@pytest.mark.parametrize(
    "config",
    [LoraConfig(r=4, lora_alpha=8), IncLoraConfig(r=4, lora_alpha=8, merge_finished_adapters=True),
     NLoraConfig(r=4, lora_alpha=8, collision_lambda=1.0), ILoraConfig(r=4, lora_alpha=8, ema_decay=0.5)],
    ids=["seqlora", "inclora-merged", "nlora", "ilora"],
)  # fmt: skip
def test_root_adapter_is_the_continual_model_for_plain_peft(config, tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, config)
    expected = continual_logits(trainer)
    folder = trainer.save_continual(tmp_path / "final")
    base, _ = tiny_model("llama", tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the root config is a plain LoraConfig: silent in plain peft
        plain = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    for adapter in trainer.peft_model.peft_config:
        assert (folder / adapter / "adapter_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


@pytest.mark.parametrize(
    "config",
    [NLoraConfig(r=4, lora_alpha=8, collision_lambda=[0.5, 0.5, 0.5]),
     IncLoraConfig(r=4, lora_alpha=8, merge_finished_adapters=True),
     ILoraConfig(r=4, lora_alpha=8, ema_decay=0.5, replay_buffer_size=6)],
    ids=["nlora", "inclora-merged", "ilora"],
)  # fmt: skip
def test_continue_in_a_fresh_trainer_with_a_new_task(config, tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, config)
    folder = trainer.save_continual(tmp_path / "final")
    before = continual_logits(trainer)
    frozen = {a: [p.detach().clone() for p in adapter_parameters(trainer.peft_model, a)] for a in trainer.peft_model.peft_config}

    base, _ = tiny_model("llama", tokenizer)
    resumed = ContinualTrainer.from_continual(str(folder), base, training_args(tmp_path / "more", num_train_epochs=2),
                                              processing_class=tokenizer)  # fmt: skip
    assert resumed.result.task_names == ["colors", "animals"] and len(resumed.result.accuracy_matrix) == 2
    torch.testing.assert_close(continual_logits(resumed), before, rtol=1e-5, atol=1e-5)
    if isinstance(config, ILoraConfig):
        assert resumed.method.buffer.examples == trainer.method.buffer.examples
    result = resumed.train_task(synthetic_task("fruits", n_train=8))
    assert result.task_names == ["colors", "animals", "fruits"]
    assert [len(r) for r in result.accuracy_matrix] == [3, 3, 3] and all(v is not None for v in result.accuracy_matrix[2])
    if isinstance(config, IncLoraConfig):
        for adapter, params in frozen.items():  # tasks 1-2 stay frozen while task 3 trains
            assert all(torch.equal(a, b) for a, b in zip(params, adapter_parameters(resumed.peft_model, adapter)))
        assert resumed.method.adapters[-1] == "task_3_fruits"


def test_interrupted_save_leaves_no_folder_and_keeps_the_old_one(tokenizer, tmp_path, monkeypatch):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=1)
    folder = trainer.save_continual(tmp_path / "final")
    state_before = (folder / "continual_state.json").read_text()
    import peft_continual.persistence as persistence

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persistence, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_continual(tmp_path / "final")
    with pytest.raises(OSError, match="disk full"):
        trainer.save_continual(tmp_path / "other")
    assert (folder / "continual_state.json").read_text() == state_before
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".*staging*"))


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(MARKER),))


MARKER = ""


def test_planted_pickle_is_refused_and_never_run(tokenizer, tmp_path):
    global MARKER
    trainer = train(tokenizer, tmp_path, ReplayConfig(r=4, lora_alpha=8), names=("colors",), epochs=1)
    folder = trainer.save_continual(tmp_path / "final")
    MARKER = str(tmp_path / "pwned")
    (folder / "default" / "adapter_model.bin").write_bytes(pickle.dumps(_Payload()))
    base, _ = tiny_model("llama", tokenizer)
    with pytest.raises(ContinualStateError, match="pickle-based files"):
        ContinualTrainer.from_continual(str(folder), base, training_args(tmp_path), processing_class=tokenizer)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: (f / "continual_state.json").write_text("{broken"), "is corrupted"),
        (lambda f: (f / "continual_state.json").unlink(), "has no continual_state.json"),
        (lambda f: (f / "task_1_colors" / "adapter_model.safetensors").unlink(), "lacks the weights"),
        (lambda f: (f / "continual_state.safetensors").write_bytes(b"garbage"), "is corrupted"),
    ],
    ids=["bad-json", "no-state", "missing-adapter", "bad-tensors"],
)
def test_damaged_state_gives_a_clear_error(damage, message, tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=1)
    folder = trainer.save_continual(tmp_path / "final")
    damage(folder)
    base, _ = tiny_model("llama", tokenizer)
    with pytest.raises(ContinualStateError, match=message):
        ContinualTrainer.from_continual(str(folder), base, training_args(tmp_path), processing_class=tokenizer)


def test_wrong_base_model_gives_a_clear_error(tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=1)
    folder = trainer.save_continual(tmp_path / "final")
    other, _ = tiny_model("gpt2", tokenizer)
    with pytest.raises(ContinualStateError, match="do not fit this base model"):
        ContinualTrainer.from_continual(str(folder), other, training_args(tmp_path), processing_class=tokenizer)


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = kwargs["folder_path"]
        self.uploaded = sorted(str(p.relative_to(folder)) for p in __import__("pathlib").Path(folder).rglob("*") if p.is_file())
        self.card = (__import__("pathlib").Path(folder) / "README.md").read_text()
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return "commit-url"


def test_model_card_and_upload_without_network(tokenizer, tmp_path, monkeypatch):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8, collision_lambda=0.7))
    api = FakeApi()
    import peft_continual.hub as hub

    monkeypatch.setattr(hub, "HfApi", lambda token=None: api)
    assert trainer.push_to_hub("me/continual-demo", private=True, token="hf_SECRET_TOKEN") == "commit-url"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"] and api.calls[1][1] == "me/continual-demo"
    assert api.calls[0][2]["private"] is True
    assert {"adapter_config.json", "adapter_model.safetensors", "continual_state.json", "README.md",
            "task_1_colors/adapter_model.safetensors", "task_2_animals/adapter_config.json"} <= set(api.uploaded)  # fmt: skip
    card = api.card
    for needle in ("continual-learning", "nlora", "colors → animals", "| 2. animals |", "collision_lambda", "0.7",
                   "Average accuracy", "Backward transfer"):  # fmt: skip
        assert needle in card, needle
    assert "hf_SECRET_TOKEN" not in card


def test_token_never_written_to_saved_files(tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=1)
    trainer.args.hub_token = "hf_SECRET_TOKEN"
    folder = trainer.save_continual(tmp_path / "final")
    for path in folder.rglob("*"):
        if path.is_file():
            assert b"hf_SECRET_TOKEN" not in path.read_bytes(), path


def test_push_folder_to_hub_uses_the_given_api(tmp_path):
    api = FakeApi()
    (tmp_path / "README.md").write_text("card")
    push_folder_to_hub(tmp_path, "me/x", api=api, revision="main")
    assert api.calls[1][2]["folder_path"] == str(tmp_path) and api.calls[1][2]["revision"] == "main"
