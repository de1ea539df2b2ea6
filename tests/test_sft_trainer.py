"""ContinualSFTTrainer: the continual core on TRL's SFTTrainer trains what ContinualTrainer trains, with SFTConfig."""

import copy
import inspect

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import synthetic_task, tiny_model, training_args
from peft_continual import (
    ContinualTrainer,
    ILoraConfig,
    IncLoraConfig,
    LwfConfig,
    NLoraConfig,
    NLoraReplayConfig,
    OLoraConfig,
    ReplayConfig,
    SsrConfig,
    load_continual_tasks,
)
from peft_continual.trainer import ContinualTrainerMixin

trl = pytest.importorskip("trl")
from trl import SFTConfig, SFTTrainer  # noqa: E402

from peft_continual import ContinualSFTTrainer  # noqa: E402

METHODS = {
    "nlora": NLoraConfig(r=4, lora_alpha=8, collision_lambda=0.5),
    "ilora": ILoraConfig(r=4, lora_alpha=8, replay_buffer_size=8, replay_batch_size=2, ema_decay=0.8),
}


def sft_config(tmp_path, **overrides) -> SFTConfig:
    """training_args' values as an SFTConfig (the same optimisation, TRL's own fields at their defaults)."""
    values = {k: v for k, v in training_args(tmp_path).to_dict().items() if k in inspect.signature(SFTConfig).parameters}
    values.update(overrides)
    return SFTConfig(**{k: v for k, v in values.items() if not k.startswith("_")})


def build(trainer_class, tokenizer, args, config, **kwargs):
    model, targets = tiny_model("llama", tokenizer)
    config = copy.deepcopy(config)
    config.target_modules = set(targets)
    kwargs.setdefault("evaluation_method", "rank")
    return trainer_class(model=get_peft_model(model, config), args=args, processing_class=tokenizer,
                         max_source_length=64, **kwargs)  # fmt: skip


def weights(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.peft_model.named_parameters() if ".lora_" in name}


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("method", list(METHODS))
def test_same_data_and_seed_train_the_same_adapters_as_continual_trainer(method, accumulation, tokenizer, tmp_path):
    """One core, two trainers: the adapters after two tasks agree to 1e-5 (no chat template: TRL and this package
    tokenise the reference prompt and its answer alike), with gradient accumulation too."""
    tasks = [synthetic_task("colors", n_train=8), synthetic_task("animals", n_train=8)]
    steps = {"num_train_epochs": 2, "per_device_train_batch_size": 4 // accumulation, "gradient_accumulation_steps": accumulation}
    ours = build(ContinualTrainer, tokenizer, training_args(tmp_path / "a", **steps), METHODS[method])
    ours.train_continual(copy.deepcopy(tasks))
    sft = build(ContinualSFTTrainer, tokenizer, sft_config(tmp_path / "b", **steps), METHODS[method])
    sft.train_continual(copy.deepcopy(tasks))
    expected, got = weights(ours), weights(sft)
    assert expected.keys() == got.keys() and len(expected) > 8
    assert all(expected[n].abs().max() > 1e-3 for n in expected if "lora_B" in n)  # every B moved from its zero init
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)
    assert sft.result.accuracy_matrix == ours.result.accuracy_matrix


def chats(pairs, context=False):
    """TRL conversational rows; with ``context``, an earlier exchange before the question."""
    earlier = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] if context else []
    return datasets.Dataset.from_list([
        {"messages": earlier + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs
    ])  # fmt: skip


@pytest.mark.parametrize("method", list(METHODS))
def test_in_memory_chats_train_the_same_adapters_as_continual_trainer(method, chat_tokenizer, tmp_path):
    """The TRL user's path: `messages` datasets in memory, the chat template, SFTConfig; the same adapters as
    ContinualTrainer's (both train the template's rendering of the conversation, its end-of-turn included)."""
    opposites = chats([(f"opposite of {a}", b) for a, b in [("hot", "cold"), ("big", "small"), ("old", "new"), ("up", "down")] * 2])
    greetings = chats([(f"say {w}", w) for w in ["red", "blue", "cat", "dog"] * 2], context=True)
    tasks = load_continual_tasks([("opposites", opposites), ("greetings", greetings)], eval_fraction=0.25)
    generate = {"evaluation_method": "generate"}
    ours = build(ContinualTrainer, chat_tokenizer, training_args(tmp_path / "a", num_train_epochs=2), METHODS[method], **generate)
    ours.train_continual(copy.deepcopy(tasks))
    sft = build(ContinualSFTTrainer, chat_tokenizer, sft_config(tmp_path / "b", num_train_epochs=2), METHODS[method], **generate)
    sft.train_continual(copy.deepcopy(tasks))
    assert [f["input_ids"] for f in sft._cl_features(tasks[1])] == [f["input_ids"] for f in ours._cl_features(tasks[1])]
    expected, got = weights(ours), weights(sft)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)


def test_trl_prepares_each_task_by_its_sft_config(tokenizer, tmp_path):
    """completion_only_loss=False trains the prompt too; max_length truncates as TRL does."""
    task = synthetic_task("colors", n_train=4)
    only = build(ContinualSFTTrainer, tokenizer, sft_config(tmp_path / "a"), METHODS["nlora"])
    everything = build(ContinualSFTTrainer, tokenizer, sft_config(tmp_path / "b", completion_only_loss=False),
                       METHODS["nlora"])  # fmt: skip
    short = build(ContinualSFTTrainer, tokenizer, sft_config(tmp_path / "c", max_length=12), METHODS["nlora"])
    masked, full, cut = (t._cl_features(task) for t in (only, everything, short))
    assert all(-100 in labels for labels in masked["labels"])
    assert all(labels == ids for labels, ids in zip(full["labels"], full["input_ids"]))
    assert all(len(ids) <= 12 for ids in cut["input_ids"]) and len(cut) <= len(masked)


def test_chat_messages_in_memory_train_with_trl_and_log_its_metrics(chat_tokenizer, tmp_path):
    """A TRL user's path: an in-memory `messages` dataset, SFTConfig, N-LoRA; TRL's metrics and ours are logged."""
    chats = datasets.Dataset.from_list([
        {"messages": [{"role": "user", "content": f"opposite of {a}"}, {"role": "assistant", "content": b}]}
        for a, b in [("hot", "cold"), ("big", "small"), ("old", "new"), ("up", "down")] * 3
    ])  # fmt: skip
    tasks = load_continual_tasks([("opposites", chats)], eval_fraction=0.25)
    trainer = build(ContinualSFTTrainer, chat_tokenizer, sft_config(tmp_path, logging_steps=1), METHODS["nlora"],
                    evaluation_method="generate")  # fmt: skip
    result = trainer.train_continual(tasks)
    assert result.num_trained == 1 and result.task_metrics == ["exact_match"]
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"loss_task", "loss_collision", "entropy", "mean_token_accuracy"} <= logged
    prompt = trainer._cl_features(tasks[0])  # the chat template's assistant turn is what is trained
    ids, labels = prompt["input_ids"][0], prompt["labels"][0]
    trained = chat_tokenizer.decode([i for i, l in zip(ids, labels) if l != -100])
    assert trained.startswith(tasks[0].train[0]["completion"]) and "<|im_end|>" in trained


def test_sft_trainer_with_a_continual_peft_config_stops(tokenizer, tmp_path):
    """SFTTrainer(peft_config=NLoraConfig) used to train plain LoRA without a word."""
    model, targets = tiny_model("llama", tokenizer)
    rows = datasets.Dataset.from_list([{"prompt": "opposite of hot", "completion": " cold"}] * 4)
    trainer = SFTTrainer(model=model, args=sft_config(tmp_path), train_dataset=rows, processing_class=tokenizer,
                         peft_config=NLoraConfig(r=4, lora_alpha=8, target_modules=targets))  # fmt: skip
    with pytest.raises(RuntimeError, match="NLoraConfig.*plain LoRA.*ContinualSFTTrainer"):
        trainer.train()


@pytest.mark.parametrize("bad, message", [
    ({"args": "packing"}, "does not pack"),
    ({"train_dataset": datasets.Dataset.from_list([{"text": "x"}])}, "no train_dataset: pass the tasks"),
    ({"peft_config": LoraConfig()}, "no peft_config: wrap the model first"),
])  # fmt: skip
def test_what_it_cannot_do_is_refused_at_once(bad, message, tokenizer, tmp_path):
    args = sft_config(tmp_path, packing=bad.pop("args", None) == "packing")
    with pytest.raises(ValueError, match=message):
        build(ContinualSFTTrainer, tokenizer, args, METHODS["nlora"], **bad)


def test_no_name_of_sfttrainer_is_shadowed(tokenizer, tmp_path):
    """The core's attributes never reuse a name SFTTrainer sets or reads (TRL keeps its template in chat_template)."""
    sft = build(ContinualSFTTrainer, tokenizer, sft_config(tmp_path), METHODS["nlora"])
    source = inspect.getsource(trl.trainer.sft_trainer)
    core = build(ContinualTrainer, tokenizer, training_args(tmp_path / "b"), METHODS["nlora"])
    ours = set(vars(core)) - set(vars(SFTTrainer.__new__(SFTTrainer)))
    plain_trainer_names = {n for n in ours if f"self.{n}" in inspect.getsource(__import__("transformers").trainer)}
    clashes = [n for n in ours - plain_trainer_names if f"self.{n} " in source or f"self.{n}=" in source or f"self.{n}." in source]
    assert not clashes, clashes
    assert isinstance(sft, ContinualTrainerMixin) and isinstance(sft, SFTTrainer)


def test_checkpoints_during_the_first_task_save(tokenizer, tmp_path):
    """SFTTrainer writes a model card with every checkpoint: before any task has finished there is none to write."""
    trainer = build(ContinualSFTTrainer, tokenizer, sft_config(tmp_path, save_strategy="steps", save_steps=1),
                    METHODS["nlora"])  # fmt: skip
    trainer.train_continual([synthetic_task("colors", n_train=8)])
    assert list((tmp_path / "out" / "task_1_colors").glob("checkpoint-*"))


def test_a_saved_sft_run_continues_in_a_fresh_trainer_and_loads_with_plain_peft(chat_tokenizer, tmp_path):
    """save_continual / from_continual / plain peft, as with ContinualTrainer."""
    from peft import PeftModel

    from peft_continual.adapters import adapters_active

    opposites = chats([(f"opposite of {a}", b) for a, b in [("hot", "cold"), ("big", "small")] * 4])
    greetings = chats([(f"say {w}", w) for w in ["red", "blue"] * 4])
    first, second = load_continual_tasks([("opposites", opposites), ("greetings", greetings)], eval_fraction=0.25)
    generate = {"evaluation_method": "generate"}
    trainer = build(ContinualSFTTrainer, chat_tokenizer, sft_config(tmp_path / "a"), METHODS["nlora"], **generate)
    trainer.train_continual([first])
    folder = trainer.save_continual(str(tmp_path / "final"))
    model, _ = tiny_model("llama", chat_tokenizer)
    again = ContinualSFTTrainer.from_continual(str(folder), model, sft_config(tmp_path / "b"), processing_class=chat_tokenizer)
    result = again.train_task(second)
    assert result.task_names == ["opposites", "greetings"] and result.num_trained == 2
    ids = torch.tensor([chat_tokenizer("opposite of hot")["input_ids"]])
    peft_model = again.peft_model.eval()
    with torch.no_grad(), adapters_active(peft_model, again.method.eval_adapters()):
        expected = peft_model(input_ids=ids).logits
    again.save_continual(str(tmp_path / "final2"))
    base, _ = tiny_model("llama", chat_tokenizer)
    with torch.no_grad():
        plain = PeftModel.from_pretrained(base, str(tmp_path / "final2")).eval()(input_ids=ids).logits
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_an_interrupted_sft_run_resumes_to_the_uninterrupted_adapters(method, tokenizer, tmp_path):
    """Stopped after step 2 of task 2 (its checkpoint at step 2 saved), resumed by a fresh trainer: the same adapters
    as a run never stopped, through TRL's checkpointing and the continual progress folder."""
    from transformers import TrainerCallback

    class Stop(Exception):
        pass

    class StopInTask2(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if "task_2" in args.output_dir and state.global_step == 2:
                raise Stop

    def run(out, callbacks=()):
        args = sft_config(out, save_strategy="steps", save_steps=1, learning_rate=1e-2)
        trainer = build(ContinualSFTTrainer, tokenizer, args, METHODS[method], callbacks=list(callbacks))
        trainer.train_continual([synthetic_task("colors", n_train=12), synthetic_task("animals", n_train=12)],
                                resume_from_checkpoint=True)  # fmt: skip
        return weights(trainer)

    expected = run(tmp_path / "whole")
    with pytest.raises(Stop):
        run(tmp_path / "stopped", [StopInTask2()])
    got = run(tmp_path / "stopped")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("config", [
    LoraConfig(r=4, lora_alpha=8),
    IncLoraConfig(r=4, lora_alpha=8, merge_finished_adapters=True),
    OLoraConfig(r=4, lora_alpha=8, l2_lambda=0.1),
    ReplayConfig(r=4, lora_alpha=8, replay_buffer_size=8, replay_batch_size=2),
    NLoraReplayConfig(r=4, lora_alpha=8, replay_buffer_size=8, replay_batch_size=2),
    LwfConfig(r=4, lora_alpha=8, distill_positions="all"),
    SsrConfig(r=4, lora_alpha=8, replay_buffer_size=8, replay_batch_size=2, ssr_examples_per_task=4, ssr_max_new_tokens=8),
], ids=["seqlora", "inclora-merged", "olora", "replay", "nlora_replay", "lwf", "ssr"])  # fmt: skip
def test_every_other_registered_method_trains_on_trl(config, tokenizer, tmp_path):
    trainer = build(ContinualSFTTrainer, tokenizer, sft_config(tmp_path), config)
    result = trainer.train_continual([synthetic_task("colors", n_train=8), synthetic_task("animals", n_train=8)])
    assert result.num_trained == 2 and result.method == trainer.method.name
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert "loss_task" in logged and "mean_token_accuracy" in logged
