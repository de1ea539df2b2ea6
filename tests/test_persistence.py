"""Saving, loading with plain peft, continuing later, model card and upload, safety of loading."""

import copy
import json
import pickle
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import TrainingArguments

from conftest import (
    CHATML,
    IDS,
    continual_logits,
    generation_task,
    make_chat_tokenizer,
    synthetic_task,
    tiny_model,
    train,
    training_args,
)
from peft_continual import ContinualTrainer, GeneralRehearsalConfig, IncLoraConfig, ILoraConfig, LwfConfig, NLoraConfig, NLoraReplayConfig, OLoraConfig, ReplayConfig, SsrConfig
from peft_continual.adapters import adapter_parameters
from peft_continual import hub
from peft_continual.hub import push_folder_to_hub
from peft_continual.persistence import ContinualStateError

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
     ILoraConfig(r=4, lora_alpha=8, ema_decay=0.5, replay_buffer_size=6),
     LoraConfig(r=4, lora_alpha=8, use_rslora=True), OLoraConfig(r=4, lora_alpha=8, use_rslora=True),
     ReplayConfig(r=4, lora_alpha=8, replay_buffer_size=6, rank_pattern={"v_proj": 2}),
     NLoraConfig(r=4, lora_alpha=8, use_rslora=True, collision_lambda=1.0, target_modules="all-linear")],
    ids=["nlora", "inclora-merged", "ilora", "seqlora-rslora", "olora-rslora", "replay-rank_pattern", "nlora-rslora-all-linear"],
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
    if isinstance(config, ReplayConfig):
        assert resumed.method.buffer.examples == trainer.method.buffer.examples
    result = resumed.train_task(synthetic_task("fruits", n_train=8))
    assert result.task_names == ["colors", "animals", "fruits"]
    assert [len(r) for r in result.accuracy_matrix] == [3, 3, 3] and all(v is not None for v in result.accuracy_matrix[2])
    if isinstance(config, IncLoraConfig):
        for adapter, params in frozen.items():  # tasks 1-2 stay frozen while task 3 trains
            assert all(torch.equal(a, b) for a, b in zip(params, adapter_parameters(resumed.peft_model, adapter)))
        assert resumed.method.adapters[-1] == "task_3_fruits"
    again = resumed.save_continual(tmp_path / "again")  # the root still is the continued model, for plain peft
    base, _ = tiny_model("llama", tokenizer)
    with torch.no_grad():
        plain = PeftModel.from_pretrained(base, str(again)).eval()(input_ids=IDS).logits
    torch.testing.assert_close(plain, continual_logits(resumed), rtol=1e-5, atol=1e-5)


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


SYSTEM_TURN = "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a careful assistant.<|im_end|>\n{% endif %}"


class FakeApi:
    """Replaces huggingface_hub.HfApi's network methods: records every call and what an upload would carry."""

    def __init__(self, monkeypatch, whoami=None):
        self.calls, self.files = [], {}
        self.create_error = self.upload_error = None  # set to an exception to make that call fail
        monkeypatch.setattr(hub, "hub_unreachable", lambda *args, **kwargs: None)  # the Hub answers
        whoami = whoami or {"name": "me", "auth": {"accessToken": {"role": "write"}}}
        monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda api, *args, **kw: self._whoami(whoami))
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda api, repo_id, **kw: self._create(repo_id, kw))
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda api, **kw: self._upload(kw))

    def _whoami(self, answer):
        self.calls.append(("whoami", None, {}))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _create(self, repo_id, kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.create_error:
            raise self.create_error

    def _upload(self, kwargs):
        if self.upload_error:
            raise self.upload_error
        folder = Path(kwargs["folder_path"])
        self.files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return "commit-url"

    @property
    def card(self):
        return self.files["README.md"].decode()

    def state(self):
        return json.loads(self.files["continual_state.json"])

    def tensors(self):
        return safetensors.torch.load(self.files["continual_state.safetensors"])


def test_model_card_and_upload_without_network(tokenizer, tmp_path, monkeypatch):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8, collision_lambda=0.7))
    api = FakeApi(monkeypatch)
    assert trainer.push_to_hub("my message", repo_id="me/continual-demo", private=True, token="hf_SECRET_TOKEN") == "commit-url"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"] and api.calls[1][1] == "me/continual-demo"
    assert api.calls[0][2]["private"] is True and api.calls[1][2]["commit_message"] == "my message"
    assert {"adapter_config.json", "adapter_model.safetensors", "continual_state.json", "README.md",
            "task_1_colors/adapter_model.safetensors", "task_2_animals/adapter_config.json"} <= set(api.files)  # fmt: skip
    card = api.card
    for needle in ("continual-learning", "nlora", "colors → animals", "| 2. animals |", "collision_lambda", "0.7",
                   "Average accuracy", "Backward transfer"):  # fmt: skip
        assert needle in card, needle
    assert "hf_SECRET_TOKEN" not in card


def test_create_model_card_writes_the_continual_card_not_trainers_draft(tokenizer, tmp_path):
    """Trainer's own create_model_card would replace the card of a run saved in output_dir with a draft that knows
    nothing of the tasks; ContinualTrainer's writes the run's card, with Trainer's keywords in it."""
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8))
    with pytest.raises(TypeError, match="model card keywords"):
        trainer.create_model_card(licence="mit")  # a typo is named, nothing is written
    assert not (Path(trainer.continual_args.output_dir) / "README.md").exists()
    trainer.create_model_card(language="en", tags=["my-tag"], finetuned_from="org/base")
    card = (Path(trainer.continual_args.output_dir) / "README.md").read_text()
    for needle in ("continual-learning", "my-tag", "colors → animals", "| 2. animals |", "Backward transfer"):
        assert needle in card, needle
    trainer.create_model_card()  # without keywords: the very card a saved run carries
    saved = trainer.save_continual(tmp_path / "saved", include_data=False) / "README.md"
    assert (Path(trainer.continual_args.output_dir) / "README.md").read_text() == saved.read_text()


def test_model_card_documents_prompt_training_and_eval_sizes(tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8))
    card = (trainer.save_continual(tmp_path / "final") / "README.md").read_text()
    prompt = trainer.tasks[0].prompt("{text}")
    assert f"```text\n{prompt}\n```" in card and "Dataset:animals" in card and "Target (follows the prompt directly):\n\n```text\n {label}<eos>\n```" in card
    for needle in ("`learning_rate`: `0.01`", "`num_train_epochs`: `2`", "`per_device_train_batch_size`: `4`",
                   "`seed`: `0`", "`lr_scheduler_type`: `constant`", "colors 8, animals 8", "±17.7 points"):  # fmt: skip  50/sqrt(8) = 17.68
        assert needle in card, needle


@pytest.mark.parametrize("name,expected", [("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
                                           ("LOCAL", None), ("", None)])  # fmt: skip
def test_card_base_model_is_a_hub_id_never_a_local_path(name, expected, tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    model.name_or_path = model.config._name_or_path = str(tmp_path) if name == "LOCAL" else name
    trainer = ContinualTrainer(model=get_peft_model(model, NLoraConfig(r=4, target_modules=set(targets))),
                               processing_class=tokenizer, args=training_args(tmp_path), max_source_length=64)  # fmt: skip
    trainer.train_continual([synthetic_task("colors", n_train=4)])
    card = ModelCard.load(trainer.save_continual(tmp_path / "final") / "README.md")
    assert card.data.base_model == expected
    assert str(tmp_path) not in card.content


def test_card_shows_the_chat_prompt_as_trained_with_its_system_turn(tmp_path):
    """A chat-template run was trained on the template's rendering, system turn included: the card shows that, not
    the reference `Dataset:...Answer:` prompt."""
    tokenizer = make_chat_tokenizer()
    tokenizer.chat_template = SYSTEM_TURN + CHATML
    model, targets = tiny_model("llama", tokenizer)
    trainer = ContinualTrainer(model=get_peft_model(model, NLoraConfig(r=4, target_modules=set(targets))),
                               processing_class=tokenizer, args=training_args(tmp_path), max_source_length=128,
                               chat_template="on")  # fmt: skip
    trainer.train_continual([synthetic_task("colors", n_train=4), generation_task("opposites", n_train=4)])
    card = (trainer.save_continual(tmp_path / "final") / "README.md").read_text()
    system = "<|im_start|>system\nYou are a careful assistant.<|im_end|>\n"
    colors = (f"{system}<|im_start|>user\nWhich kind? Choose one from the option.\nOption: cold, warm \n{{text}}"
              "<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip
    opposites = f"{system}<|im_start|>user\n{{prompt}}<|im_end|>\n<|im_start|>assistant\n"
    target = "Target (follows the prompt directly):\n\n```text\n{}<|im_end|>\n\n```"  # ChatML's end-of-turn and newline
    assert f"```text\n{colors}\n```\n" + target.format("{label}") in card
    assert f"```text\n{opposites}\n```\n" + target.format("{completion}") in card
    assert "Dataset:colors" not in card and "Answer:" not in card and "chat template" in card


@pytest.mark.parametrize("protocol", ["generate", "rank"])
def test_card_scoring_note_fits_each_tasks_kind(protocol, tokenizer, tmp_path):
    """Generation tasks are generated and scored by their metric; classification tasks as the run scored them (a
    run ranking labels has classification tasks only)."""
    model, targets = tiny_model("llama", tokenizer)
    trainer = ContinualTrainer(model=get_peft_model(model, NLoraConfig(r=4, target_modules=set(targets))),
                               processing_class=tokenizer, args=training_args(tmp_path), max_source_length=64,
                               evaluation_method=protocol)  # fmt: skip
    tasks = [synthetic_task("colors", n_train=4)]
    if protocol == "generate":
        tasks.append(generation_task("opposites", n_train=4, metric="f1"))
    trainer.train_continual(tasks)
    card = (trainer.save_continual(tmp_path / "final") / "README.md").read_text()
    colors = card[card.index("**colors**"):].split("\n")[0]
    if protocol == "generate":
        opposites = card[card.index("**opposites**"):].split("\n")[0]
        assert "generate greedily" in opposites and "scored by f1" in opposites
        assert "generate greedily after the prompt; the answer must be the label" in colors
        assert "log-likelihood" not in card
    else:
        assert "rank the labels by their log-likelihood" in colors and "scored by accuracy" in colors


def test_card_lists_the_training_arguments_each_task_trained_with(tokenizer, tmp_path):
    """A continued run keeps its earlier tasks' arguments: the new TrainingArguments are only the new tasks'."""
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=2)  # lr 0.01
    folder = trainer.save_continual(tmp_path / "final")
    base, _ = tiny_model("llama", tokenizer)
    new_args = TrainingArguments(output_dir=str(tmp_path / "more"), use_cpu=True, report_to="none")  # 5e-05, 3 epochs
    resumed = ContinualTrainer.from_continual(str(folder), base, new_args, processing_class=tokenizer)
    card = (resumed.save_continual(tmp_path / "again") / "README.md").read_text()
    training = card[card.index("## Training arguments"):]
    assert "`learning_rate`: `0.01`" in training and "`num_train_epochs`: `2`" in training
    assert "5e-05" not in training and "`3.0`" not in training
    resumed.train_task(synthetic_task("fruits", n_train=4))
    card = (resumed.save_continual(tmp_path / "third") / "README.md").read_text()
    training = card[card.index("## Training arguments"):]
    assert "| argument | colors | fruits |" in training and "| `learning_rate` | `0.01` | `5e-05` |" in training
    assert "| `num_train_epochs` | `2` | `3.0` |" in training


def test_old_state_without_per_task_arguments_keeps_the_runs_record(tokenizer, tmp_path):
    """A run saved before per-task arguments: its tasks keep the run's recorded arguments, not the new ones."""
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=2)
    folder = trainer.save_continual(tmp_path / "final")
    state = json.loads((folder / "continual_state.json").read_text())
    state["training_arguments"] = state["result"]["details"][0].pop("training_arguments")
    (folder / "continual_state.json").write_text(json.dumps(state))
    base, _ = tiny_model("llama", tokenizer)
    new_args = TrainingArguments(output_dir=str(tmp_path / "more"), use_cpu=True, report_to="none")
    resumed = ContinualTrainer.from_continual(str(folder), base, new_args, processing_class=tokenizer)
    card = (resumed.save_continual(tmp_path / "again") / "README.md").read_text()
    assert "`learning_rate`: `0.01`" in card and "5e-05" not in card


@pytest.mark.parametrize("finetuned_from", ["org/base", None])
def test_upload_names_no_local_path(finetuned_from, tokenizer, tmp_path, monkeypatch):
    """A local base and local data: the upload names the base by finetuned_from (else not at all) and the data by
    name; peft's per-adapter READMEs (cards naming the local base) stay out. The local save keeps its paths."""
    local = tmp_path / "models" / "my-base"
    model, targets = tiny_model("llama", tokenizer)
    model.save_pretrained(local)
    model.name_or_path = model.config._name_or_path = str(local)
    trainer = ContinualTrainer(model=get_peft_model(model, LoraConfig(r=4, target_modules=set(targets))),
                               processing_class=tokenizer, args=training_args(tmp_path), max_source_length=64)  # fmt: skip
    tasks = [synthetic_task(n, n_train=4) for n in ("colors", "animals")]
    for task in tasks:
        task.source = str(tmp_path / "data" / task.name)
    trainer.train_continual(tasks)
    api = FakeApi(monkeypatch)
    trainer.push_to_hub(repo_id="me/x", include_data=True, **({"finetuned_from": finetuned_from} if finetuned_from else {}))
    leaks = [name for name, data in api.files.items() if str(tmp_path).encode() in data]
    assert not leaks, leaks
    configs = [json.loads(data) for name, data in api.files.items() if name.endswith("adapter_config.json")]
    assert len(configs) == 2 and all(c["base_model_name_or_path"] == finetuned_from for c in configs)  # root + default
    assert [name for name in api.files if name.endswith("README.md")] == ["README.md"]
    assert [t["source"] for t in api.state()["tasks"]] == ["colors", "animals"]
    assert api.state()["base_model"]["name_or_path"] == finetuned_from
    assert ("local folder, whose path is not published" in api.card) == (finetuned_from is None)
    local_state = json.loads((trainer.save_continual(tmp_path / "final") / "continual_state.json").read_text())
    assert local_state["tasks"][0]["source"] == str(tmp_path / "data" / "colors")


def test_upload_carries_no_data_unless_asked(tokenizer, tmp_path, monkeypatch):
    trainer = train(tokenizer, tmp_path, ILoraConfig(r=4, lora_alpha=8, ema_decay=0.5, replay_buffer_size=6))
    eval_texts = {t for task in trainer.tasks for t in task.eval["text"]}
    assert len(trainer.method.buffer) == 6
    api = FakeApi(monkeypatch)
    trainer.push_to_hub(repo_id="me/x")
    everything = b"".join(api.files.values())
    assert not [t for t in eval_texts if t.encode() in everything]
    assert not [k for k in api.tensors() if k.startswith("buffer.")]
    assert api.state()["data_included"] is False and all(t["eval"] is None for t in api.state()["tasks"])
    assert [t["eval_examples"] for t in api.state()["tasks"]] == [8, 8]  # sizes, not rows
    assert not [k for k in api.state()["method_state"] if "buffer" in k]  # no buffer content in the meta either
    # downloaded, it serves inference but cannot continue the run: a clear error, not a crash later
    (tmp_path / "dl").mkdir()
    for name, data in api.files.items():
        (tmp_path / "dl" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dl" / name).write_bytes(data)
    base, _ = tiny_model("llama", tokenizer)
    PeftModel.from_pretrained(base, str(tmp_path / "dl"))
    base, _ = tiny_model("llama", tokenizer)
    with pytest.raises(ContinualStateError, match="without its training and evaluation data.*include_data=True"):
        ContinualTrainer.from_continual(str(tmp_path / "dl"), base, training_args(tmp_path), processing_class=tokenizer)

    trainer.push_to_hub(repo_id="me/x", include_data=True)  # explicit opt-in
    assert api.state()["data_included"] is True and {k for k in api.tensors() if k.startswith("buffer.")}
    assert all(t.encode() in api.files["continual_state.json"] for t in eval_texts)
    local = trainer.save_continual(tmp_path / "local")  # local saves keep what from_continual needs
    assert json.loads((local / "continual_state.json").read_text())["data_included"] is True


def test_push_to_hub_takes_trainers_arguments(tokenizer, tmp_path, monkeypatch):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=1)
    api = FakeApi(monkeypatch)
    trainer.push_to_hub(
        "End of training", True, None, None, repo_id="me/x", finetuned_from="HuggingFaceTB/SmolLM2-135M-Instruct",
        dataset_tags="cl_benchmark", dataset="cl_benchmark", dataset_args="dbpedia", tags=["mine"], language="en",
        license="apache-2.0", model_name="My continual LoRA", tasks="text-classification",
    )  # fmt: skip
    upload = api.calls[-1][2]
    assert upload["commit_message"] == "End of training" and upload["revision"] is None
    assert set(upload) == {"repo_id", "folder_path", "commit_message", "revision", "repo_type", "run_as_future"}
    card = ModelCard(api.card)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.datasets == ["cl_benchmark"]
    assert {"mine", "text-classification", "nlora"} <= set(card.data.tags)
    assert card.data.language == "en" and card.data.license == "apache-2.0"
    assert "# My continual LoRA" in card.content and "(dbpedia)" in card.content
    with pytest.raises(TypeError, match="unexpected keyword argument.*bogus"):
        trainer.push_to_hub(repo_id="me/x", bogus=1)


def test_training_arguments_push_to_hub_pushes_once_at_the_end(tokenizer, tmp_path, monkeypatch):
    api = FakeApi(monkeypatch)
    model, targets = tiny_model("llama", tokenizer)
    args = training_args(tmp_path, push_to_hub=True, hub_model_id="me/run", hub_token="hf_SECRET_TOKEN",
                         save_strategy="steps", save_steps=1)  # fmt: skip
    trainer = ContinualTrainer(model=get_peft_model(model, NLoraConfig(r=4, target_modules=set(targets))),
                               processing_class=tokenizer, args=args, max_source_length=64)  # fmt: skip
    assert [c[:2] for c in api.calls] == [("whoami", None), ("create_repo", "me/run")]  # checked before training
    trainer.train_continual([synthetic_task(n, n_train=8) for n in ("colors", "animals")])
    assert [c[:2] for c in api.calls[2:]] == [("create_repo", "me/run"), ("upload_folder", "me/run")]
    assert "task_2_animals/adapter_model.safetensors" in api.files and not [f for f in api.files if "checkpoint" in f]
    assert args.push_to_hub is True  # the user's object is left alone
    assert (tmp_path / "out" / "final" / "continual_state.json").is_file()  # saved locally before the upload


def test_token_never_written_to_saved_or_uploaded_files(tokenizer, tmp_path, monkeypatch):
    model, targets = tiny_model("llama", tokenizer)
    args = training_args(tmp_path, hub_token="hf_SECRET_TOKEN", hub_model_id="me/x")  # where saving and pushing read it
    trainer = ContinualTrainer(model=get_peft_model(model, NLoraConfig(r=4, target_modules=set(targets))),
                               processing_class=tokenizer, args=args, max_source_length=64)  # fmt: skip
    trainer.train_continual([synthetic_task("colors", n_train=4)])
    seen = []
    monkeypatch.setattr(huggingface_hub.HfApi, "__init__", lambda api, token=None, **kw: seen.append(token) or None)
    api = FakeApi(monkeypatch)
    trainer.push_to_hub(include_data=True)
    assert seen == ["hf_SECRET_TOKEN"] and api.files  # the token was in hand while saving and uploading
    folder = trainer.save_continual(tmp_path / "final")
    files = {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()} | api.files
    files |= {str(p): p.read_bytes() for p in (tmp_path / "out" / "continual_progress").rglob("*") if p.is_file()}
    for name, data in files.items():
        assert b"hf_SECRET_TOKEN" not in data, name


def test_push_folder_to_hub_uses_the_given_api(tmp_path):
    class Api:
        calls = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(kwargs)

        def upload_folder(self, **kwargs):
            self.calls.append(kwargs)

    api = Api()
    (tmp_path / "README.md").write_text("card")
    push_folder_to_hub(tmp_path, "me/x", api=api, revision="main")
    assert api.calls[1]["folder_path"] == str(tmp_path) and api.calls[1]["revision"] == "main"


# ------------------------------------------------------------------------------------------------- base fingerprint


def test_continuing_on_another_base_of_the_same_shapes_is_refused(tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    model.name_or_path = "org/base-a"
    trainer = ContinualTrainer(model=get_peft_model(model, NLoraConfig(r=4, target_modules=set(targets))),
                               processing_class=tokenizer, args=training_args(tmp_path), max_source_length=64)  # fmt: skip
    trainer.train_continual([synthetic_task("colors", n_train=4)])
    folder = trainer.save_continual(tmp_path / "final")

    same, _ = tiny_model("llama", tokenizer)  # same weights, loaded from a local copy and in bf16: accepted
    same.to(torch.bfloat16).name_or_path = str(tmp_path)
    again = ContinualTrainer.from_continual(str(folder), same, training_args(tmp_path / "a"), processing_class=tokenizer)
    assert again.method.config.base_model_name_or_path == "org/base-a"  # the Hub id it was saved under stays

    other, _ = tiny_model("llama", tokenizer, seed=1)  # same shapes, other weights
    with pytest.raises(ContinualStateError, match="not the one the run .* was trained on .*org/base-a.*allow_other_base=True"):
        ContinualTrainer.from_continual(str(folder), other, training_args(tmp_path / "b"), processing_class=tokenizer)

    other, _ = tiny_model("llama", tokenizer, seed=1)
    other.name_or_path = "org/base-b"
    switched = ContinualTrainer.from_continual(str(folder), other, training_args(tmp_path / "c"), processing_class=tokenizer,
                                               allow_other_base=True)  # fmt: skip
    switched.train_task(synthetic_task("animals", n_train=4))
    saved = switched.save_continual(tmp_path / "switched")
    assert ModelCard.load(saved / "README.md").data.base_model == "org/base-b"
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base-b"
    # the new base's fingerprint is recorded: continuing from there on base b needs no override
    other, _ = tiny_model("llama", tokenizer, seed=1)
    ContinualTrainer.from_continual(str(saved), other, training_args(tmp_path / "d"), processing_class=tokenizer)


# ------------------------------------------------------------------------------------------------- Trainer.save_model

ALL_METHODS = {
    "seqlora": LoraConfig(r=4, lora_alpha=8), "inclora": IncLoraConfig(r=4, lora_alpha=8),
    "olora": OLoraConfig(r=4, lora_alpha=8), "nlora": NLoraConfig(r=4, lora_alpha=8, collision_lambda=1.0),
    "replay": ReplayConfig(r=4, lora_alpha=8, replay_buffer_size=6), "ilora": ILoraConfig(r=4, lora_alpha=8, ema_decay=0.5),
    "nlora_replay": NLoraReplayConfig(r=4, lora_alpha=8, collision_lambda=1.0, replay_buffer_size=6),
    "lwf": LwfConfig(r=4, lora_alpha=8, distill_weight=1.0),
    "ssr": SsrConfig(r=4, lora_alpha=8, replay_buffer_size=6, ssr_examples_per_task=4, ssr_max_new_tokens=8),
    "self_rehearsal": GeneralRehearsalConfig(r=4, lora_alpha=8, general_rehearsal_examples=4, general_answer_tokens=4),
}  # fmt: skip


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_save_model_writes_the_continual_layout(method, tokenizer, tmp_path):
    trainer = train(tokenizer, tmp_path, copy.deepcopy(ALL_METHODS[method]), epochs=1)
    expected = continual_logits(trainer)
    trainer.save_model(str(tmp_path / "saved"))  # what run_clm-style scripts call at the end
    base, _ = tiny_model("llama", tokenizer)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "saved")).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "saved" / "continual_state.json").is_file()


def test_save_model_into_the_run_folder_keeps_what_it_did_not_write(tokenizer, tmp_path):
    """``save_model()`` with no argument saves into output_dir: the progress, checkpoints, predictions and a user's
    files there must survive it (it used to replace the folder whole)."""
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), epochs=1)
    run = Path(trainer.args.output_dir)
    assert run == Path(trainer.continual_args.output_dir)  # not the last task's folder
    (run / "my_notes.txt").write_text("keep me")
    (run / "task_1_colors" / "checkpoint-2").mkdir(parents=True)  # Trainer's per-task folder has the adapter's name
    (run / "task_1_colors" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    before = {p.relative_to(run) for p in run.rglob("*")}
    assert {Path("continual_progress"), Path("predictions"), Path("task_1_colors")} <= before
    expected = continual_logits(trainer)
    trainer.save_model()
    after = {p.relative_to(run) for p in run.rglob("*")}
    assert before <= after and (run / "my_notes.txt").read_text() == "keep me"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no staging or backup folder left
    base, _ = tiny_model("llama", tokenizer)
    with torch.no_grad():
        plain = PeftModel.from_pretrained(base, str(run)).eval()(input_ids=IDS).logits
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)
    trainer.save_model()  # saving again replaces its own entries only
    assert {p.relative_to(run) for p in run.rglob("*")} == after


def test_saving_a_shorter_run_over_a_longer_one_removes_only_its_old_adapters(tokenizer, tmp_path):
    longer = train(tokenizer, tmp_path / "a", NLoraConfig(r=4, lora_alpha=8), epochs=1)
    shorter = train(tokenizer, tmp_path / "b", NLoraConfig(r=4, lora_alpha=8), names=("fruits",), epochs=1)
    folder = longer.save_continual(tmp_path / "final")
    (folder / "notes").mkdir()
    shorter.save_continual(folder)
    adapters = json.loads((folder / "continual_state.json").read_text())["adapters"]
    assert adapters == ["task_1_fruits"] and (folder / "notes").is_dir()
    assert not (folder / "task_1_colors").exists() and not (folder / "task_2_animals").exists()
    (folder / "task_1_fruits" / "checkpoint-1").mkdir()
    longer.save_continual(folder)  # a stale adapter folder loses the adapter files, and keeps the rest
    assert sorted(p.name for p in (folder / "task_1_fruits").iterdir()) == ["checkpoint-1"]


def test_non_blocking_push_keeps_the_folder_until_the_upload_ends(tokenizer, tmp_path, monkeypatch):
    from concurrent.futures import Future

    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=1)
    uploads = []

    def upload_folder(api, **kwargs):
        uploads.append((Path(kwargs["folder_path"]), kwargs["run_as_future"], Future()))
        return uploads[-1][2]

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda api, repo_id, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    future = trainer.push_to_hub("msg", blocking=False, repo_id="me/x")
    folder, as_future, _ = uploads[0]
    assert as_future is True and (folder / "adapter_model.safetensors").is_file()  # still there while uploading
    future.set_result("commit-url")
    assert not folder.exists()


def test_saving_knows_nothing_of_publishing():
    """persistence never imports hub (not even inside a function): hub builds on persistence, one way."""
    import ast

    import peft_continual.persistence as persistence

    tree = ast.parse(Path(persistence.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and (m == "hub" or m.endswith(".hub") or "huggingface_hub" in m)}


def test_fingerprint_of_a_tensor_beyond_float32_integer_range():
    """SmolLM2's embedding has 28 311 552 entries: positions past 2**24 must stay inside the tensor."""
    from peft_continual.persistence import FINGERPRINT_SAMPLES, base_fingerprint

    module = torch.nn.Module()
    n = 28_311_552  # a float32 linspace to n - 1 ends at n
    module.weight = torch.nn.Parameter(torch.randn(n), requires_grad=False)
    shape, values = base_fingerprint(module)["weight"]
    assert shape == [n] and len(values) == FINGERPRINT_SAMPLES
    assert values[0] == round(module.weight[0].item(), 6) and values[-1] == round(module.weight[-1].item(), 6)
