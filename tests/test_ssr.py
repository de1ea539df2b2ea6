"""SSR: its config, the synthesis steps (request, sampling, filter, labelling) and the method on tiny models."""

import math

import pytest
import torch
from peft import get_peft_model
from transformers import TrainerCallback

from conftest import generation_task, memorised_task, synthetic_task, tiny_model, training_args
from peft_continual import ContinualTrainer, SsrConfig
from peft_continual import synthesis
from peft_continual.methods import ReplayMethod, SsrMethod
from peft_continual.synthesis import (
    INPUT_MARKER,
    Candidate,
    filter_candidates,
    label_inputs,
    request_ids,
    sample_candidates,
    synthesis_request,
)
from peft_continual.tasks import PromptEncoder, tokenize_task

# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"ssr_examples_per_task": 0}, "ssr_examples_per_task must be a positive integer"),
        ({"ssr_candidates_factor": 0.5}, "ssr_candidates_factor must be a finite number >= 1"),
        ({"ssr_candidates_factor": float("inf")}, "ssr_candidates_factor must be a finite number >= 1"),
        ({"ssr_temperature": 0.0}, "ssr_temperature must be a finite number > 0"),
        ({"ssr_top_p": 0.0}, r"ssr_top_p must be in \(0, 1\]"),
        ({"ssr_top_p": 1.5}, r"ssr_top_p must be in \(0, 1\]"),
        ({"ssr_max_new_tokens": 0}, "ssr_max_new_tokens must be a positive integer"),
        ({"ssr_min_input_chars": 0}, "ssr_min_input_chars must be an integer >= 1"),
        ({"ssr_demonstrations": -1}, "ssr_demonstrations must be an integer >= 0"),
        ({"ssr_resynthesize": "yes"}, "ssr_resynthesize must be True or False"),
        ({"replay_buffer_size": 0}, "nothing to replay"),  # ER's own checks still run
        ({"use_dora": True}, "SsrConfig does not support use_dora"),
    ],
)
def test_invalid_configs_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SsrConfig(**kwargs)


def test_real_demonstrations_need_an_explicit_opt_in():
    with pytest.raises(ValueError, match="ssr_demonstrations=2.*ssr_allow_real_demonstrations=True"):
        SsrConfig(ssr_demonstrations=2)
    assert SsrConfig(ssr_demonstrations=2, ssr_allow_real_demonstrations=True).ssr_demonstrations == 2
    assert SsrConfig().ssr_demonstrations == 0 and not SsrConfig().ssr_allow_real_demonstrations


def test_hyperparameters_and_config_round_trip(tokenizer, tmp_path):
    assert SsrMethod.hyperparameters()[4:] == [
        "replay_buffer_size", "replay_batch_size", "general_rehearsal_examples", "general_rehearsal_share",
        "general_prompts", "general_answer_tokens", "ssr_examples_per_task", "ssr_candidates_factor", "ssr_temperature",
        "ssr_top_p", "ssr_max_new_tokens", "ssr_min_input_chars", "ssr_inputs_from", "ssr_resynthesize",
        "ssr_demonstrations", "ssr_allow_real_demonstrations",
    ]  # fmt: skip
    assert SsrMethod.data_tensor_prefixes == ReplayMethod.data_tensor_prefixes  # synthetic rows are not uploaded
    model, targets = tiny_model("llama", tokenizer)
    get_peft_model(model, SsrConfig(r=4, target_modules=targets, ssr_examples_per_task=5, ssr_top_p=0.8)).save_pretrained(tmp_path)
    loaded = SsrConfig.from_pretrained(str(tmp_path))
    assert type(loaded) is SsrConfig and (loaded.ssr_examples_per_task, loaded.ssr_top_p) == (5, 0.8)


# ------------------------------------------------------------------------------------------------ synthesis steps


def test_request_names_the_task_its_options_and_only_given_demonstrations(tokenizer, chat_tokenizer):
    task = synthetic_task("colors")
    request = synthesis_request(task)
    assert "Which kind? Choose one from the option." in request and "Options: cold, warm" in request
    assert INPUT_MARKER not in request  # no real row unless demonstrations are given
    assert synthesis_request(task, ["red car"]).endswith(f"{INPUT_MARKER} red car")
    assert "Options" not in synthesis_request(generation_task("opposites"))
    plain = tokenizer.decode(request_ids(PromptEncoder(tokenizer, 64), request))
    assert plain.endswith(f"\n{INPUT_MARKER}")  # the reference form: the input follows the marker
    chat = chat_tokenizer.decode(request_ids(PromptEncoder(chat_tokenizer, 64, chat=True), request))
    assert chat.startswith("<|im_start|>user\n") and chat.endswith("<|im_start|>assistant\n")  # the reply is the input


def test_filter_strips_cuts_and_drops_empty_short_unfinished_and_repeated_inputs():
    request = synthesis_request(synthetic_task("colors"))
    candidates = [
        Candidate("  a big red car  "),
        Candidate(""),  # empty
        Candidate("   \n "),  # empty once stripped
        Candidate("ab"),  # too short
        Candidate("a very long input that the budget cut", finished=False),  # too long
        Candidate("Options: cold, warm"),  # the request echoed
        Candidate("Which kind? Choose one from the option. blue sky"),  # holds a line of the request
        Candidate("A big RED car!"),  # a duplicate once normalised
        Candidate("old blue boat\nAnswer: cold"),  # the model went on to answer: cut there
        Candidate("green tree\nInput: another one"),  # ... or to another input
        Candidate("small hat\nOutput:"),  # ... or to an output field (base models write one)
        Candidate("old blue boat"),  # a duplicate of the cut one
    ]
    assert filter_candidates(candidates, request=request, min_chars=3) == [
        "a big red car", "old blue boat", "green tree", "small hat"]  # fmt: skip
    assert filter_candidates([Candidate("ab")], request=request, min_chars=2) == ["ab"]
    assert filter_candidates([Candidate("rite")], request=request, min_chars=3) == ["rite"]  # not a word of "write"
    assert filter_candidates([Candidate("new input")], request=request, min_chars=3) == []  # words of the request


def test_filter_never_keeps_a_user_row():
    """The rule SSR rests on: a candidate equal to any user row the method could see is never a rehearsal row."""
    request = synthesis_request(synthetic_task("colors"), ["big red"])
    candidates = [Candidate("Big red."), Candidate("small blue"), Candidate("BIG  red")]
    assert filter_candidates(candidates, request=request, min_chars=3, user_texts=["big red"]) == ["small blue"]


def stub_answers(monkeypatch, tokenizer, answers):
    """The model's greedy answers, in order, instead of its real ones (the prompts still run through it)."""
    pending = list(answers)

    def generate_batch(model, batch, config):
        rows = [pending.pop(0) for _ in range(batch.ids.shape[0])]
        return [tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in rows]

    monkeypatch.setattr(synthesis, "generate_batch", generate_batch)
    return pending


def test_labelling_keeps_only_well_formed_classification_answers(tokenizer, monkeypatch):
    model, _ = tiny_model("llama", tokenizer)
    task = synthetic_task("colors")
    inputs = ["big red", "old blue", "new green", "one yellow", "some orange"]
    stub_answers(monkeypatch, tokenizer, ["warm", " cold ", "Warm", "warm cold", ""])
    rows = label_inputs(model.eval(), PromptEncoder(tokenizer, 64), task, inputs, batch_size=2, answer_tokens=8)
    assert rows == [{"text": "big red", "label": "warm"}, {"text": "old blue", "label": "cold"}]
    pending = stub_answers(monkeypatch, tokenizer, ["warm", "x", "cold", "warm"])
    rows = label_inputs(model, PromptEncoder(tokenizer, 64), task, inputs, batch_size=2, answer_tokens=8, limit=1)
    assert rows == [{"text": "big red", "label": "warm"}] and len(pending) == 2  # the first batch was enough


def test_labelling_keeps_non_empty_generation_answers(tokenizer, monkeypatch):
    model, _ = tiny_model("llama", tokenizer)
    stub_answers(monkeypatch, tokenizer, ["cold", "  ", "small"])
    rows = label_inputs(model.eval(), PromptEncoder(tokenizer, 64), generation_task("opposites"),
                        ["opposite of hot", "opposite of up", "opposite of big"], batch_size=8, answer_tokens=8)  # fmt: skip
    assert rows == [{"prompt": "opposite of hot", "context": "", "completion": "cold"},
                    {"prompt": "opposite of big", "context": "", "completion": "small"}]  # fmt: skip


def test_sampler_is_seeded_and_leaves_the_run_s_random_stream_alone(tokenizer):
    model, _ = tiny_model("llama", tokenizer)
    encoder, request = PromptEncoder(tokenizer, 64), synthesis_request(synthetic_task("colors"))
    options = dict(temperature=0.9, top_p=0.95, max_new_tokens=6, batch_size=3)
    torch.manual_seed(123)
    first = sample_candidates(model.eval(), encoder, request, 7, seed=5, **options)
    after_sampling = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_sampling)  # the global stream did not move
    assert sample_candidates(model, encoder, request, 7, seed=5, **options) == first
    assert sample_candidates(model, encoder, request, 7, seed=6, **options) != first
    assert len(first) == 7 and all(isinstance(c.text, str) for c in first)
    ids = [tokenizer(c.text, add_special_tokens=False)["input_ids"] for c in first if c.finished]
    assert all(len(i) <= 6 for i in ids)  # a finished candidate stopped within the budget


# ------------------------------------------------------------------------------------------------ method


class LogsPerTask(TrainerCallback):
    """Every training log, by the task folder it was written in (Trainer's log history restarts each task)."""

    def __init__(self):
        self.logs = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in (logs or {}):
            self.logs.setdefault(args.output_dir.rsplit("/", 1)[-1], []).append(dict(logs))


def ssr_trainer(tokenizer, tmp_path, **config):
    model, targets = tiny_model("llama", tokenizer)
    values = dict(r=4, lora_alpha=8, target_modules=targets, ssr_examples_per_task=6, ssr_max_new_tokens=12,
                  replay_batch_size=2)  # fmt: skip
    values.update(config)
    args = training_args(tmp_path, num_train_epochs=4, learning_rate=3e-2, per_device_train_batch_size=2)
    return ContinualTrainer(model=get_peft_model(model, SsrConfig(**values)), args=args, processing_class=tokenizer,
                            max_source_length=64)  # fmt: skip


def real_row_ids(trainer):
    return {tuple(ids) for task in trainer.tasks for ids in tokenize_task(trainer.processing_class, task, 64)["input_ids"]}


def test_real_sampler_runs_end_to_end_and_logs_its_cost(tokenizer, tmp_path):
    """The untouched pipeline on a tiny random model: whatever it keeps, the cost is recorded and no real row enters."""
    trainer = ssr_trainer(tokenizer, tmp_path, ssr_examples_per_task=4, ssr_candidates_factor=2.5)
    trainer.train_continual([synthetic_task(name, n_train=8) for name in ("colors", "animals", "fruits")])
    log = trainer.method.synthesis_log
    assert [(e["task_index"], e["source_task"]) for e in log] == [(1, "colors"), (2, "animals")]  # one per task
    for entry in log:
        assert entry["candidates"] == math.ceil(4 * 2.5) and 0 <= entry["kept"] <= min(entry["filtered"], 4)
        assert entry["filtered"] <= entry["finished"] <= entry["candidates"] and entry["seconds"] >= 0
    assert trainer.method.synthesized_for == 2
    prepare = [d["prepare_seconds"] for d in trainer.result.details]  # synthesis time, apart from training
    assert prepare[0] < min(prepare[1:]) and min(prepare[1:]) > 0
    real = real_row_ids(trainer)
    assert all(tuple(e["input_ids"]) not in real for e in trainer.method.buffer.examples)


FIXED_INPUTS = ["big red", "old blue", "one orange", "the green", "near yellow", "some purple", "small red", "cat over"]


@pytest.fixture(scope="module")
def fixed_input_run(tokenizer, tmp_path_factory):
    """Three tasks; the sampler returns fixed inputs (a tiny model writes no usable ones), everything else is real:
    filter, labelling by the trained model, encoding by the trainer, the buffer and the replay loss."""
    calls = []

    def sampler(model, encoder, request, n, **kwargs):
        calls.append(request)
        return [Candidate(text) for text in (FIXED_INPUTS * n)[:n]]  # repeats: the filter keeps one of each

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthesis, "sample_candidates", sampler)
        trainer = ssr_trainer(tokenizer, tmp_path_factory.mktemp("ssr"))
        logs = LogsPerTask()
        trainer.add_callback(logs)
        buffers = []
        prepare = trainer.method.prepare_task

        def recording_prepare(trainer_, index, **kwargs):
            prepare(trainer_, index, **kwargs)
            buffers.append([dict(e) for e in trainer.method.buffer.examples])

        trainer.method.prepare_task = recording_prepare
        trainer.train_continual([memorised_task(name, 8) for name in ("colors", "animals", "fruits")])
        trainer.method.prepare_task = prepare
        yield trainer, logs.logs, buffers, calls


def test_buffer_holds_synthesized_rows_only_and_replays_from_task_two(fixed_input_run):
    trainer, logs, buffers, calls = fixed_input_run
    assert len(calls) == 2  # colors before task 2, animals before task 3: each task's rows synthesized once
    assert buffers[0] == [] and buffers[1] and buffers[2]
    # colors' rows, answered by the model that had just learned colors, are kept as they were; animals' join them
    assert buffers[2][: len(buffers[1])] == buffers[1] and {e["task_index"] for e in buffers[1]} == {0}
    assert {e["task_index"] for e in buffers[2][len(buffers[1]) :]} == {1}
    real = real_row_ids(trainer)
    tokenizer = trainer.processing_class
    for examples, names in ((buffers[1], ["colors"]), (buffers[2], ["colors", "animals"])):
        for example in examples:
            assert tuple(example["input_ids"]) not in real  # no user row, by token ids
            text = tokenizer.decode(example["input_ids"], skip_special_tokens=True)
            task = trainer.tasks[example["task_index"]]
            assert any(f"\n{inp}\nAnswer:" in text for inp in FIXED_INPUTS) and f"Dataset:{task.name}" in text
            answer = tokenizer.decode([t for t in example["labels"] if t != -100], skip_special_tokens=True).strip()
            assert answer in task.labels  # well-formed, encoded as the task's own rows
    assert len(buffers[1]) == len({tuple(e["input_ids"]) for e in buffers[1]})  # the duplicate input was dropped
    folders = sorted(logs)
    assert not any("loss_replay" in entry for entry in logs[folders[0]])
    for folder in folders[1:]:
        assert all("loss_replay" in entry for entry in logs[folder]), folder
    first, second = [e for e in trainer.method.synthesis_log if e["task_index"] == 1][0], trainer.method.synthesis_log[1]
    assert first["candidates"] == 12 and first["finished"] == 12 and first["filtered"] == len(FIXED_INPUTS)
    assert 1 <= first["kept"] <= 6 and second["task_index"] == 2


def test_resynthesize_rewrites_every_earlier_task_before_every_task(tokenizer, tmp_path, monkeypatch):
    """``ssr_resynthesize=True``: before task 3 colors is synthesized again (answered by the model after task 2) and
    the buffer is rebuilt from both tasks' new rows."""
    requests, buffers = [], []
    monkeypatch.setattr(synthesis, "sample_candidates",
                        lambda model, encoder, request, n, **kw: requests.append(request) or
                        [Candidate(t) for t in (FIXED_INPUTS * n)[:n]])  # fmt: skip
    trainer = ssr_trainer(tokenizer, tmp_path, ssr_resynthesize=True)
    prepare = trainer.method.prepare_task

    def recording_prepare(trainer_, index, **kwargs):
        prepare(trainer_, index, **kwargs)
        buffers.append(trainer.method.buffer)

    trainer.method.prepare_task = recording_prepare
    trainer.train_continual([memorised_task(name, 8) for name in ("colors", "animals", "fruits")])
    log = trainer.method.synthesis_log
    assert [(e["task_index"], e["source_task"]) for e in log] == [(1, "colors"), (2, "colors"), (2, "animals")]
    assert len(requests) == 3 and requests[0] == requests[1] != requests[2]
    assert buffers[2] is not buffers[1] and {e["task_index"] for e in buffers[2].examples} == {0, 1}
    assert buffers[2].num_seen == len(buffers[2])  # a fresh reservoir: only the new rows were offered


def test_prepare_task_does_not_synthesize_twice_and_state_round_trips(fixed_input_run, tokenizer, tmp_path, monkeypatch):
    trainer, _, _, _ = fixed_input_run
    method = trainer.method
    monkeypatch.setattr(synthesis, "sample_candidates", lambda *a, **k: pytest.fail("synthesized twice"))
    before = [dict(e) for e in method.buffer.examples]
    method.prepare_task(trainer, 2)  # a task resumed with its synthesis restored
    assert method.buffer.examples == before
    method.synthesized_for = 1  # as a fresh process resuming inside task 3 would be, before the checkpoint loads
    method.prepare_task(trainer, 2, resumed_meta={"synthesized_for": 2})  # the checkpoint holds task 3's buffer
    method.synthesized_for = 2

    folder = trainer.save_continual(tmp_path / "final")
    base, _ = tiny_model("llama", tokenizer)
    resumed = ContinualTrainer.from_continual(str(folder), base, training_args(tmp_path / "more"), processing_class=tokenizer)
    assert isinstance(resumed.method, SsrMethod)
    assert resumed.method.synthesized_for == 2 and resumed.method.synthesis_log == method.synthesis_log
    assert resumed.method.buffer.examples == method.buffer.examples
    meta, _ = resumed.method.state_dict()
    assert meta["synthesis_log"] == method.synthesis_log


def test_demonstrations_need_the_rows_and_are_never_replayed(tokenizer, tmp_path):
    trainer = ssr_trainer(tokenizer, tmp_path, ssr_demonstrations=2, ssr_allow_real_demonstrations=True)
    task = synthetic_task("colors", n_train=8)
    demos = trainer.method.demonstrations(task, 1)
    assert len(demos) == 2 and set(demos) <= set(task.train["text"])
    assert trainer.method.demonstrations(task, 1) == demos  # the same ones for a seed and task
    task.train = None  # restored from a saved run
    with pytest.raises(ValueError, match="ssr_demonstrations=2 needs the training rows"):
        trainer.method.demonstrations(task, 1)


@pytest.mark.parametrize("inputs_from, disabled", [("base", True), ("current", False)])
def test_inputs_are_written_by_the_base_unless_asked_otherwise_and_answered_by_the_current_model(
    tokenizer, tmp_path, monkeypatch, inputs_from, disabled
):
    from peft.tuners.lora import LoraLayer

    def adapters_off(model):
        return all(m.disable_adapters for m in model.modules() if isinstance(m, LoraLayer))

    seen = {}

    def sampler(model, encoder, request, n, **kwargs):
        seen["sampling"] = adapters_off(model)
        return [Candidate(text) for text in (FIXED_INPUTS * n)[:n]]

    def labeller(model, encoder, task, inputs, **kwargs):
        seen["labelling"] = adapters_off(model)
        return []

    monkeypatch.setattr(synthesis, "sample_candidates", sampler)
    monkeypatch.setattr(synthesis, "label_inputs", labeller)
    trainer = ssr_trainer(tokenizer, tmp_path, ssr_inputs_from=inputs_from)
    trainer.train_continual([memorised_task(name, 8) for name in ("colors", "animals")])
    assert seen == {"sampling": disabled, "labelling": False}
    assert not adapters_off(trainer.peft_model)
