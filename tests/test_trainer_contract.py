"""ContinualTrainer keeps Trainer's contract: its names, train(), in-task evaluation, logging and callbacks."""

import inspect
import re
import warnings

import pytest
import torch
import transformers.trainer
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from conftest import Counting, memorised_task, tiny_model, training_args
from peft_continual import ContinualTrainer, GeneralRehearsalConfig, IncLoraConfig, ILoraConfig, LwfConfig, NLoraConfig, OLoraConfig, ReplayConfig, SsrConfig
from peft_continual.adapters import adapter_parameters
from peft_continual.persistence import ContinualStateError
from peft_continual.tasks import tokenize_task
from peft_continual.trainer import MIN_STEPS_PER_TASK, ContinualTrainerMixin

# Trainer names ContinualTrainer overrides on purpose, keeping their signature and meaning.
OVERRIDES = {"__init__", "__doc__", "__module__", "__dict__", "__weakref__", "compute_loss", "log", "train", "push_to_hub", "create_model_card", "save_model",
             "_load_from_checkpoint"}  # fmt: skip

METHODS = {
    "seqlora": LoraConfig(r=4, lora_alpha=8),
    "inclora": IncLoraConfig(r=4, lora_alpha=8),
    "nlora": NLoraConfig(r=4, lora_alpha=8, collision_lambda=0.5),
    "olora": OLoraConfig(r=4, lora_alpha=8, l2_lambda=0.1),
    "replay": ReplayConfig(r=4, lora_alpha=8, replay_buffer_size=8, replay_batch_size=2),
    "ilora": ILoraConfig(r=4, lora_alpha=8, replay_buffer_size=8, replay_batch_size=2, ema_decay=0.8),
    "lwf": LwfConfig(r=4, lora_alpha=8),
    "ssr": SsrConfig(r=4, lora_alpha=8, replay_buffer_size=8, replay_batch_size=2, ssr_examples_per_task=4, ssr_max_new_tokens=8),
    "self_rehearsal": GeneralRehearsalConfig(r=4, lora_alpha=8, general_rehearsal_examples=4, general_answer_tokens=4,
                                             replay_batch_size=2),
}


def make_trainer(tokenizer, tmp_path, config, **args):
    model, targets = tiny_model("llama", tokenizer)
    config.target_modules = set(targets)
    return ContinualTrainer(model=get_peft_model(model, config), args=training_args(tmp_path, **args),
                            processing_class=tokenizer, max_source_length=64)  # fmt: skip


def test_no_trainer_name_is_shadowed(tokenizer, tmp_path):
    """Only deliberate overrides share a name with Trainer; our own attributes never reuse one Trainer reads."""
    shadowed = {name for klass in (ContinualTrainerMixin, ContinualTrainer) for name in vars(klass) if hasattr(Trainer, name)}
    assert shadowed <= OVERRIDES, shadowed - OVERRIDES
    trainer = make_trainer(tokenizer, tmp_path, IncLoraConfig(r=4))
    model, _ = tiny_model("llama", tokenizer)
    plain = Trainer(model=model, args=training_args(tmp_path / "plain"))
    source = inspect.getsource(transformers.trainer)
    ours = set(vars(trainer)) - set(vars(plain))
    assert ours and not [n for n in ours if re.search(rf"self\.{re.escape(n)}\b", source)]


def test_in_task_evaluation_with_an_eval_dataset(tokenizer, tmp_path):
    """eval_strategy="steps" runs Trainer's own evaluation (eval_loss) during each task."""
    colors, animals = memorised_task("colors", 8), memorised_task("animals", 8)
    model, targets = tiny_model("llama", tokenizer)
    trainer = ContinualTrainer(
        model=get_peft_model(model, NLoraConfig(r=4, lora_alpha=8, target_modules=targets)), processing_class=tokenizer,
        args=training_args(tmp_path, eval_strategy="steps", eval_steps=1), max_source_length=64,
        eval_dataset=tokenize_task(tokenizer, colors, 64),
    )  # fmt: skip
    trainer.train_continual([colors, animals])
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))  # task 2's history: one per step
    assert not any("loss_collision" in e for e in trainer.state.log_history if "eval_loss" in e)


def test_train_called_directly_says_to_call_train_continual(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, NLoraConfig(r=4))
    with pytest.raises(RuntimeError, match=r"call trainer.train_continual\(.*\) or trainer.train_task\(task\)"):
        trainer.train()
    assert not list(tmp_path.glob("out/*")) and trainer.state.global_step == 0


def test_several_gpus_in_one_process_are_refused(tokenizer, tmp_path, monkeypatch):
    """Trainer would use nn.DataParallel; the message says how to launch one process per GPU."""
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 2))
    with pytest.raises(ValueError, match=r"sees 2 GPUs.*nn.DataParallel.*accelerate launch --num_processes 2.*torchrun"):
        make_trainer(tokenizer, tmp_path, NLoraConfig(r=4))


def test_fsdp_is_refused_before_training(tokenizer, tmp_path, monkeypatch):
    """FSDP leaves the adapter weights the trainer reads outside the forward sharded (not testable on CPU: Trainer
    falls back to DDP there), so the accelerator's FSDP plugin is simulated."""
    create = Trainer.create_accelerator_and_postprocess

    def with_fsdp(self):
        create(self)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", with_fsdp)
    with pytest.raises(ValueError, match=r"FSDP is not supported.*Use DDP.*or DeepSpeed ZeRO-3"):
        make_trainer(tokenizer, tmp_path, NLoraConfig(r=4))


def test_a_cpu_run_prints_no_pin_memory_warning(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, IncLoraConfig(r=4), use_cpu=False, num_train_epochs=2)
    assert trainer.args.device.type == "cpu"  # these test machines have no accelerator
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train_task(memorised_task("colors", 4))
    assert not [w for w in caught if "pin_memory" in str(w.message)]


class Recorder(TrainerCallback):
    def __init__(self):
        self.logs, self.evaluations = [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append(dict(metrics))


def test_continual_scores_reach_log_and_callbacks(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, IncLoraConfig(r=4, lora_alpha=8), num_train_epochs=2)
    trainer.evaluate_zero_shot, trainer.evaluate_unseen = True, "next"
    recorder = Recorder()
    trainer.add_callback(recorder)
    result = trainer.train_continual([memorised_task(n, 4) for n in ("colors", "animals", "fruits")])
    R = result.accuracy_matrix
    assert len(recorder.evaluations) == 3  # once per task, after its evaluation
    first, last = recorder.evaluations[0], recorder.evaluations[-1]
    assert first.pop("epoch") == 2.0  # Trainer's log adds the epoch, as for its own evaluations
    assert first == {"eval_colors_accuracy": R[0][0], "eval_animals_accuracy": R[0][1], "eval_continual_tasks_trained": 1,
                     "eval_continual_average_accuracy": R[0][0]}  # fmt: skip
    assert last["eval_continual_tasks_trained"] == 3
    assert [last[f"eval_{n}_accuracy"] for n in ("colors", "animals", "fruits")] == R[2]
    for key, value in result.summary().items():  # AA, BWT, FWT, forgetting: all defined after 3 tasks
        assert last[f"eval_continual_{key}"] == pytest.approx(value)
    assert all(e in recorder.logs for e in recorder.evaluations[1:])  # the same values reach on_log (report_to loggers)
    logged = [e for e in trainer.state.log_history if "eval_continual_tasks_trained" in e]
    assert logged and logged[-1]["eval_continual_average_accuracy"] == pytest.approx(result.average_accuracy)


def test_rerun_without_the_resume_flag_over_a_resumable_run_is_refused(tokenizer, tmp_path):
    make_trainer(tokenizer, tmp_path, IncLoraConfig(r=4)).train_continual([memorised_task("colors", 4)])
    again = make_trainer(tokenizer, tmp_path, IncLoraConfig(r=4))
    with pytest.raises(ContinualStateError, match=r"holds the progress of an earlier run.*resume_from_checkpoint=True"):
        again.train_continual([memorised_task("colors", 4)])
    assert again.result.accuracy_matrix == []  # refused before any training


class Snapshot(TrainerCallback):
    """Every adapter's weights and the trainable ones when the second task starts training."""

    def __init__(self, trainer):
        self.trainer, self.weights, self.trainable = trainer, None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if "task_2" in args.output_dir:
            self.weights = {a: [p.detach().clone() for p in adapter_parameters(model, a)] for a in model.peft_config}
            self.trainable = self.trainer.method.training_adapters()[1]


@pytest.mark.parametrize("method", list(METHODS))
def test_gradient_checkpointing_with_every_method(method, tokenizer, tmp_path):
    """Trains with finite losses; the current adapter moves, earlier ones (and I-LoRA's slow one) get no gradient."""
    config = type(METHODS[method])(**{**METHODS[method].to_dict(), "target_modules": None})
    trainer = make_trainer(tokenizer, tmp_path, config, activation_checkpointing=True, num_train_epochs=1)
    snapshot = Snapshot(trainer)
    trainer.add_callback(snapshot)
    trainer.train_continual([memorised_task("colors", 8), memorised_task("animals", 8)])
    model = trainer.peft_model
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # it was really on
    losses = [v for e in trainer.state.log_history for k, v in e.items() if k.startswith("loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert snapshot.trainable and set(snapshot.trainable) < set(snapshot.weights) | {"slow"}
    for adapter, before in snapshot.weights.items():
        after = adapter_parameters(model, adapter)
        moved = not all(torch.equal(a, b) for a, b in zip(before, after))
        if adapter in snapshot.trainable:
            assert moved, adapter
        elif adapter != "slow":  # I-LoRA's slow learner moves by EMA only
            assert not moved, adapter
        if adapter not in snapshot.trainable:
            assert all(p.grad is None for p in after), adapter


@pytest.mark.parametrize("method,forwards", [("replay", 2), ("ilora", 3)])
def test_replay_and_consistency_forwards_go_through_the_wrapped_model(method, forwards, tokenizer, tmp_path):
    """Task loss, replay and (I-LoRA) the slow learner's forward all run through the model Trainer wrapped."""
    trainer = make_trainer(tokenizer, tmp_path, type(METHODS[method])(**METHODS[method].to_dict()), num_train_epochs=1)
    calls = []
    training_step = trainer.training_step

    def wrapped_step(model, inputs, num_items_in_batch=None):
        counting = Counting(model)
        loss = training_step(counting, inputs, num_items_in_batch)
        calls.append(counting.calls)
        return loss

    trainer.training_step = wrapped_step
    trainer.train_continual([memorised_task("colors", 4), memorised_task("animals", 4)])
    assert calls == [1, forwards]  # one step per task; task 2 replays


def test_a_task_of_few_optimizer_steps_is_said_before_training(tokenizer, tmp_path, caplog):
    """12 examples at batch 8 for 1 epoch are 2 steps: such a task scored 0 % with no word said."""
    trainer = make_trainer(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), per_device_train_batch_size=8)
    with caplog.at_level("WARNING"):
        trainer.train_continual([memorised_task("colors", 12)])
    warning = [r.getMessage() for r in caplog.records if "optimizer step" in r.getMessage()]
    assert warning and "only 2 optimizer step(s)" in warning[0] and f"at least {MIN_STEPS_PER_TASK}" in warning[0]
    caplog.clear()
    trainer = make_trainer(tokenizer, tmp_path / "b", NLoraConfig(r=4, lora_alpha=8), per_device_train_batch_size=2,
                           num_train_epochs=2)  # fmt: skip
    with caplog.at_level("WARNING"):
        trainer.train_continual([memorised_task("colors", 12)])
    assert not [r for r in caplog.records if "optimizer step" in r.getMessage()]
