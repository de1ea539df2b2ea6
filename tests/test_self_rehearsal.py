"""General self-rehearsal: the base model's answers to general prompts, replayed from the first task, no user row kept."""

import json

import pytest
import torch
from peft import get_peft_model

from conftest import memorised_task, tiny_model, training_args
from peft_continual import ContinualTrainer, GeneralRehearsalConfig, ReplayConfig, SsrConfig
from peft_continual import self_rehearsal
from peft_continual.general_ability import _normalize, load_suite, suite_prompts
from peft_continual.methods import GeneralRehearsalMethod
from peft_continual.replay import ReservoirBuffer
from peft_continual.self_rehearsal import REHEARSAL_TASK_INDEX, load_rehearsal_prompts, pick_prompts
from peft_continual.tasks import IGNORE_INDEX, tokenize_task

PROMPTS = [f"Tell me about item number {i} please." for i in range(10)]


def test_shipped_pool_is_large_and_shares_nothing_with_the_retention_suite():
    pool = load_rehearsal_prompts()
    assert len(pool) >= 200 and len(set(pool)) == len(pool)
    assert not {_normalize(p) for p in pool} & suite_prompts()
    # nor a request kind: no pool prompt starts as a chat prompt of the suite does (first three words)
    suite_starts = {" ".join(p.split()[:3]) for p in load_suite().chat}
    assert not [p for p in pool if " ".join(p.split()[:3]) in suite_starts]


def test_user_pools_are_read_and_checked(tmp_path):
    text = tmp_path / "pool.txt"
    text.write_text("\n".join(PROMPTS + [PROMPTS[0], "  "]) + "\n")
    assert load_rehearsal_prompts(str(text)) == PROMPTS  # duplicates and blank lines dropped
    rows = tmp_path / "pool.jsonl"
    rows.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS[:3]))
    assert load_rehearsal_prompts(str(rows)) == PROMPTS[:3]
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_rehearsal_prompts(str(tmp_path / "missing.txt"))
    rows.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match="'prompt' string"):
        load_rehearsal_prompts(str(rows))
    question = load_suite().facts[0]["question"]
    text.write_text(f"{PROMPTS[0]}\n{question.upper()}\n")  # the same prompt, however cased
    with pytest.raises(ValueError, match="also in the general-ability retention suite"):
        load_rehearsal_prompts(str(text))


def test_pick_is_seeded_and_bounded():
    assert pick_prompts(PROMPTS, 4, seed=1) == pick_prompts(PROMPTS, 4, seed=1) != pick_prompts(PROMPTS, 4, seed=2)
    assert sorted(pick_prompts(PROMPTS, 10, seed=0)) == sorted(PROMPTS)
    with pytest.raises(ValueError, match="needs a pool of at least 11 prompts; the pool has 10"):
        pick_prompts(PROMPTS, 11, seed=0)


@pytest.mark.parametrize(
    "config_class, kwargs, message",
    [
        (ReplayConfig, {"replay_buffer_size": 0}, "nothing to replay"),
        (ReplayConfig, {"general_rehearsal_examples": -1}, "general_rehearsal_examples must be an integer >= 0"),
        (ReplayConfig, {"general_answer_tokens": 0}, "general_answer_tokens must be a positive"),
        (GeneralRehearsalConfig, {"replay_buffer_size": 8}, "keeps no task row"),
        (GeneralRehearsalConfig, {"general_rehearsal_examples": 0}, "nothing to replay"),
        (ReplayConfig, {"general_rehearsal_examples": 4, "general_rehearsal_share": 0.0}, r"must be in \(0, 1\]"),
        (ReplayConfig, {"general_rehearsal_examples": 4, "general_rehearsal_share": 1.5}, r"must be in \(0, 1\]"),
        (ReplayConfig, {"general_rehearsal_share": 0.25}, "needs general_rehearsal_examples > 0"),
    ],
)
def test_invalid_configs_are_refused(config_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config_class(target_modules=["q_proj"], **kwargs)


def test_buffer_samples_its_rows_and_extra_rows_together():
    buffer = ReservoirBuffer(0, seed=0)
    buffer.add([1], [1], 0)  # capacity 0 keeps nothing
    assert len(buffer) == 0
    extra = [{"input_ids": [i], "labels": [i], "task_index": -1} for i in range(3)]
    assert sorted(e["input_ids"][0] for e in buffer.sample(3, extra=extra)) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="empty"):
        buffer.sample(1)


def test_a_share_sets_the_extra_rows_part_of_a_draw_whatever_the_sizes():
    buffer = ReservoirBuffer(10, seed=0)
    for i in range(10):
        buffer.add([i], [i], 0)
    extra = [{"input_ids": [100 + i], "labels": [0], "task_index": -1} for i in range(90)]

    def extra_fraction(share, draws=400, size=8):
        rows = [e for _ in range(draws) for e in buffer.sample(size, extra=extra, extra_share=share)]
        return sum(e["input_ids"][0] >= 100 for e in rows) / len(rows)

    assert extra_fraction(None) == pytest.approx(0.9, abs=0.02)  # uniform over all rows: their own share
    assert extra_fraction(0.25) == pytest.approx(0.25, abs=0.02)  # binomial: 3200 rows, sd 0.008
    assert extra_fraction(1.0) == 1.0
    task_rows = [e["input_ids"][0] for e in buffer.sample(10, extra=extra, extra_share=0.5) if e["input_ids"][0] < 100]
    assert len(set(task_rows)) == len(task_rows)  # without replacement within a source
    positions = [i for _ in range(200) for i, e in enumerate(buffer.sample(4, extra=extra, extra_share=0.5))
                 if e["input_ids"][0] >= 100]  # fmt: skip
    assert all(positions.count(i) > 50 for i in range(4))  # shuffled: micro-batch slices get their share too
    empty = ReservoirBuffer(10, seed=0)
    assert all(e["input_ids"][0] >= 100 for e in empty.sample(8, extra=extra, extra_share=0.1))  # no task row yet


def rehearsal_trainer(tokenizer, tmp_path, pool, config_class=GeneralRehearsalConfig, **config):
    model, targets = tiny_model("llama", tokenizer)
    values = dict(r=4, lora_alpha=8, target_modules=targets, general_rehearsal_examples=6,
                  general_prompts=str(pool), general_answer_tokens=6, replay_batch_size=2)  # fmt: skip
    values.update(config)
    args = training_args(tmp_path, num_train_epochs=4, learning_rate=3e-2, per_device_train_batch_size=2)
    return ContinualTrainer(model=get_peft_model(model, config_class(**values)), args=args, processing_class=tokenizer,
                            max_source_length=64)  # fmt: skip


class ReplayLog:
    def __init__(self):
        self.tasks = []

    def __call__(self, method):
        original = method.loss_terms

        def logged(model, inputs, wrapped=None, accumulation=1):
            weight, terms = original(model, inputs, wrapped, accumulation)
            self.tasks.append((method.task_index, "loss_replay" in terms))
            return weight, terms

        method.loss_terms = logged


@pytest.fixture(scope="module")
def rehearsal_run(tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rehearsal")
    pool = tmp / "pool.txt"
    pool.write_text("\n".join(PROMPTS))
    trainer = rehearsal_trainer(tokenizer, tmp, pool)
    log = ReplayLog()
    log(trainer.method)
    trainer.train_continual([memorised_task(name, 8) for name in ("colors", "animals")])
    return trainer, log


def base_greedy_answer(trainer, prompt_ids, budget):
    """The base's greedy answer computed here, independently: the model with its adapters disabled, token by token,
    up to and including the token that ends it."""
    model = trainer.peft_model.eval()
    ids = list(prompt_ids)
    with torch.no_grad(), model.disable_adapter():
        for _ in range(budget):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == trainer.processing_class.eos_token_id:
                break
    trainer.method.restore_adapter_state(model)
    return ids[len(prompt_ids):]


def test_rows_are_the_base_s_answers_replayed_from_the_first_task_and_no_task_row_is_kept(rehearsal_run):
    trainer, log = rehearsal_run
    method = trainer.method
    assert isinstance(method, GeneralRehearsalMethod) and len(method.buffer) == 0  # no task row kept
    assert len(method.general) == 6 and len(method.general.prompts) == 6
    assert {e["task_index"] for e in method.general.examples} == {REHEARSAL_TASK_INDEX}
    # every step of both tasks replays (task 1 included: the rows exist before any training)
    assert {task for task, replayed in log.tasks} == {0, 1} and all(replayed for _, replayed in log.tasks)
    real = {tuple(ids) for task in trainer.tasks for ids in tokenize_task(trainer.processing_class, task, 64)["input_ids"]}
    for example in method.general.examples:
        assert tuple(example["input_ids"]) not in real
        answer = [t for t in example["labels"] if t != IGNORE_INDEX]
        prompt = example["input_ids"][: len(example["input_ids"]) - len(answer)]
        assert example["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        text = trainer.processing_class.decode(prompt, skip_special_tokens=True)
        assert any(p in text for p in method.general.prompts)
        # the base (trained adapters disabled) still gives exactly these tokens (6 at most, the budget, or fewer
        # and the EOS that ended them): the rows are its own, token for token
        assert answer == base_greedy_answer(trainer, prompt, 6)


def row_agreement(model, examples):
    """The share of the rows' answer tokens that ``model`` predicts (argmax, teacher-forced)."""
    hits = total = 0
    with torch.no_grad():
        for example in examples:
            ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"][1:])
            predicted = model(input_ids=ids).logits[0, :-1].argmax(-1)
            scored = labels != IGNORE_INDEX
            hits += int((predicted[scored] == labels[scored]).sum())
            total += int(scored.sum())
    return hits / total


def test_rehearsed_rows_are_learned_where_seqlora_drifts(rehearsal_run, tokenizer, tmp_path):
    """Replay really trains on the base's answers: after both tasks the model still gives them, token by token,
    while SeqLoRA on the same tasks does not."""
    from peft import LoraConfig

    trainer, _ = rehearsal_run
    model, targets = tiny_model("llama", tokenizer)
    args = training_args(tmp_path, num_train_epochs=4, learning_rate=3e-2, per_device_train_batch_size=2)
    plain = ContinualTrainer(model=get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets)),
                             args=args, processing_class=tokenizer, max_source_length=64)  # fmt: skip
    plain.train_continual([memorised_task(name, 8) for name in ("colors", "animals")])
    examples = trainer.method.general.examples
    rehearsed, drifted = row_agreement(trainer.peft_model.eval(), examples), row_agreement(plain.peft_model.eval(), examples)
    assert rehearsed > 0.5 and rehearsed > drifted + 0.3, (rehearsed, drifted)


def test_rows_round_trip_and_are_not_regenerated(rehearsal_run, tokenizer, tmp_path, monkeypatch):
    trainer, _ = rehearsal_run
    folder = trainer.save_continual(tmp_path / "final")
    base, _ = tiny_model("llama", tokenizer)
    restored = ContinualTrainer.from_continual(str(folder), base, training_args(tmp_path / "more"), processing_class=tokenizer)
    assert isinstance(restored.method, GeneralRehearsalMethod)
    assert restored.method.general.examples == trainer.method.general.examples
    monkeypatch.setattr(self_rehearsal, "generate_batch", lambda *a, **k: pytest.fail("answered twice"))
    restored.method.check_before_training(restored.peft_model, 3)
    restored.method.prepare_task(restored, 2)  # the rows are held: nothing is generated


def test_a_bad_pool_fails_before_training(tokenizer, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(PROMPTS[:3]))
    trainer = rehearsal_trainer(tokenizer, tmp_path, pool)
    with pytest.raises(ValueError, match="needs a pool of at least 6 prompts; the pool has 3"):
        trainer.train_continual([memorised_task("colors", 8)])
    assert not (tmp_path / "out" / "continual_progress").exists()


def test_ssr_adds_general_rows_beside_its_synthesized_ones(tokenizer, tmp_path, monkeypatch):
    from peft_continual import synthesis
    from peft_continual.synthesis import Candidate

    monkeypatch.setattr(synthesis, "sample_candidates",
                        lambda model, encoder, request, n, **kw: [Candidate(f"big red {i}") for i in range(n)])  # fmt: skip
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(PROMPTS))
    trainer = rehearsal_trainer(tokenizer, tmp_path, pool, SsrConfig, replay_buffer_size=50, ssr_examples_per_task=4,
                                ssr_max_new_tokens=8)  # fmt: skip
    trainer.train_continual([memorised_task(name, 8) for name in ("colors", "animals")])
    method = trainer.method
    assert len(method.general) >= 1 and method.synthesized_for == 1
    assert {e["task_index"] for e in method.buffer.examples} <= {0}  # synthesized for task 1, apart from general rows


@pytest.mark.parametrize("share", [None, 1.0])
def test_the_share_reaches_the_replay_batches_of_a_run(tokenizer, tmp_path, share):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(PROMPTS))
    trainer = rehearsal_trainer(tokenizer, tmp_path, pool, ReplayConfig, replay_buffer_size=16,
                                general_rehearsal_share=share)  # fmt: skip
    method, drawn = trainer.method, []
    sample = method.buffer.sample

    def logged(*args, **kwargs):
        rows = sample(*args, **kwargs)
        drawn.append((method.task_index, [row in method.general.examples for row in rows]))
        return rows

    method.buffer.sample = logged
    trainer.train_continual([memorised_task(name, 8) for name in ("colors", "animals")])
    second = [is_general for task, flags in drawn if task == 1 for is_general in flags]
    assert second and len(method.general) == 6
    if share == 1.0:
        assert all(second)
    else:  # uniform over 8 task rows and 6 general ones
        assert 0 < sum(second) < len(second)


def test_an_answer_that_ends_at_once_is_a_row_and_a_cut_one_has_no_end(tokenizer, monkeypatch):
    """Rows keep the base's tokens as generated: the end token alone when the base ends at once (behaviour to keep),
    and no end token when the budget cut the answer."""
    from peft_continual.tasks import PromptEncoder

    eos = tokenizer.eos_token_id
    answers = iter([[[eos], [7, 8, 9]]])
    monkeypatch.setattr(self_rehearsal, "generate_batch", lambda model, batch, config, keep_stop: next(answers))
    model, targets = tiny_model("llama", tokenizer)
    from peft import LoraConfig

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets))
    rows = self_rehearsal.rehearsal_rows(peft_model, PromptEncoder(tokenizer, 64), PROMPTS[:2], batch_size=2,
                                         answer_tokens=3)  # fmt: skip
    assert [[t for t in r["labels"] if t != IGNORE_INDEX] for r in rows] == [[eos], [7, 8, 9]]
    assert rows[0]["input_ids"][-1] == eos and rows[1]["input_ids"][-3:] == [7, 8, 9]


def test_generate_batch_can_keep_the_token_that_ended_an_answer(tokenizer):
    """A stop token the model surely emits (its own third greedy token): cut before it by default, kept with
    ``keep_stop``; an answer the budget cut has no stop either way."""
    from peft_continual.evaluation import PromptBatch, generate_batch, greedy_config

    model, _ = tiny_model("llama", tokenizer)
    model.eval()
    prompts, pad = [[5, 9, 14], [3, 7]], tokenizer.pad_token_id

    def run(stop, keep_stop=False):
        batch = PromptBatch.prefill(model, prompts, pad, whole=False)
        config = greedy_config(pad_token_id=pad, stop_ids=[stop], max_new_tokens=8)
        return generate_batch(model, batch, config, keep_stop=keep_stop)

    free = run(tokenizer.eos_token_id)
    stop = free[0][2]
    cut, kept = run(stop), run(stop, keep_stop=True)
    assert cut[0] == free[0][: free[0].index(stop)] and kept[0] == cut[0] + [stop]
    for short, long in zip(cut[1:], kept[1:]):
        assert long == short + [stop] if stop in long else long == short


def test_a_task_resumed_from_a_checkpoint_holding_the_rows_does_not_answer_again(tokenizer, tmp_path, monkeypatch):
    """The checkpoint's state is loaded after prepare_task: its meta says it holds the rows, so none are generated
    (they would be replaced at once)."""
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(PROMPTS))
    trainer = rehearsal_trainer(tokenizer, tmp_path, pool)
    method = trainer.method
    method.check_before_training(trainer.peft_model, 1)
    assert method.state_dict()[0]["general_rows"] == 0
    monkeypatch.setattr(self_rehearsal, "generate_batch", lambda *a, **k: pytest.fail("answered for nothing"))
    method.prepare_task(trainer, 0, resumed_meta={"general_rows": 6})
    assert len(method.general) == 0
