"""Retention tasks: never trained, scored on the base model and after every task, kept apart from the task matrix."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from peft import LoraConfig, get_peft_model

from conftest import make_tokenizer, synthetic_task, tiny_model, training_args
from peft_continual import ContinualResult, ContinualTrainer, IncLoraConfig
from peft_continual.general_ability import evaluate_general_ability
from peft_continual.hub import render_model_card
from peft_continual.persistence import read_state
from peft_continual.retention import GENERAL_DEFAULT_ITEMS, GeneralRetention, RetentionTrack, build_retention_sources

TASKS_DIR = Path(__file__).parent / "data" / "lm_eval_tasks"
GENERAL_TRACKS = ["general/facts", "general/leak", "general/kl", "general/agreement"]  # the quick form


def make_trainer(tokenizer, tmp_path, config=None, seed=0, **options):
    model, targets = tiny_model("llama", tokenizer, seed=seed)
    config = config or LoraConfig(r=4, lora_alpha=8)
    config.target_modules = set(targets)
    return ContinualTrainer(
        model=get_peft_model(model, config), args=training_args(tmp_path, num_train_epochs=2, learning_rate=1e-2),
        processing_class=tokenizer, max_source_length=64, max_new_tokens=8, **options,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the track


def test_drift_is_the_paired_mean_difference_from_the_base():
    track = RetentionTrack("t", "accuracy", True, [0.5, 0.25], [[1, 0, 1, 0], [0, 0, 1, 0]])
    difference = track.drift()
    assert difference.estimate == pytest.approx(-0.25)
    assert difference.low <= -0.25 <= difference.high
    # a naive bootstrap over the items of the paired differences gives the same interval
    diffs, rng = np.array([-1.0, 0, 0, 0]), np.random.default_rng(0)
    naive = [diffs[rng.integers(0, 4, 4)].mean() for _ in range(4000)]
    assert difference.low == pytest.approx(np.quantile(naive, 0.025), abs=0.126)
    assert RetentionTrack("t", "accuracy", True, [0.5], [[1, 0]]).drift() is None  # only the base so far
    assert RetentionTrack("t", "kl", False, [0.0, None], [[0, 0], None]).drift() is None  # not measurable


def test_track_round_trips_through_the_result_json():
    result = ContinualResult(task_names=["a"], accuracy_matrix=[[0.5]], task_metrics=["accuracy"], example_scores=[[[1.0, 0.0]]])
    result.retention["general/kl"] = RetentionTrack("general/kl", "kl", False, [0.0, 0.2], [[0.0, 0.0], [0.1, 0.3]], "general")
    data = json.loads(result.to_json())
    assert data["retention"]["general/kl"]["summary"]["drift"]["estimate"] == pytest.approx(0.2)
    assert ContinualResult.from_dict(data).retention == result.retention
    assert "general/kl" in result.format_table() and "0.200 (base 0.000, +0.200" in result.format_table()


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("spec,message", [
    ("generl", "unknown retention task 'generl'"),
    ("general:0", "'general:N' \\(N items a part\\)"),
    ("general:some", "'general:full'"),
    (42, "unknown retention task 42"),
])  # fmt: skip
def test_bad_specs_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        build_retention_sources([spec])


def test_the_general_suite_once_and_distinct_names():
    with pytest.raises(ValueError, match="general suite can be given once"):
        build_retention_sources(["general", "general:full"])
    with pytest.raises(ValueError, match="distinct names"):
        build_retention_sources([synthetic_task("fruits"), synthetic_task("fruits", seed=1)])
    assert build_retention_sources(["general"])[0].limit == GENERAL_DEFAULT_ITEMS
    full = build_retention_sources(["general:full"])[0]
    assert full.limit is None and full.options == {}  # every part, every item, the suite's own budgets


def test_lm_eval_specs_are_checked_before_any_model_work(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    with pytest.raises(ValueError, match="Unknown lm-eval task 'pc_colours' \\(did you mean: pc_colors"):
        build_retention_sources(["lm_eval:pc_colours"], lm_eval_include_path=TASKS_DIR)
    with pytest.raises(FileNotFoundError, match="include path not found"):
        build_retention_sources(["lm_eval:pc_colors"], lm_eval_include_path=tmp_path / "nowhere")
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"pip install 'peft_continual\[lm_eval\]'"):
        build_retention_sources(["lm_eval:pc_colors"], lm_eval_include_path=TASKS_DIR)


def test_a_retention_task_that_is_trained_is_refused_before_training(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, retention_tasks=[synthetic_task("animals")])
    with pytest.raises(ValueError, match="retention task 'animals' is also a training task"):
        trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    renamed = synthetic_task("colors")
    renamed.name = "held_out_colors"  # same rows under another name
    trainer = make_trainer(tokenizer, tmp_path, retention_tasks=[renamed])
    with pytest.raises(ValueError, match="also a training task \\('colors'\\)"):
        trainer.train_continual([synthetic_task("colors")])
    assert not any((tmp_path / "out").iterdir())  # nothing trained, nothing written (Trainer made the folder)


# ------------------------------------------------------------------------------------------------ in a run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-task SeqLoRA run with the general suite (3 items a part) and a held-out task as retention tasks."""
    tokenizer, tmp_path = make_tokenizer(), tmp_path_factory.mktemp("retention")
    trainer = make_trainer(tokenizer, tmp_path, retention_tasks=["general:3", synthetic_task("fruits", seed=3)])
    result = trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    return trainer, result, tokenizer, tmp_path


def test_every_track_has_the_base_and_a_value_after_each_task(run):
    trainer, result, _, _ = run
    assert list(result.retention) == [*GENERAL_TRACKS, "fruits"]
    for track in result.retention.values():
        assert len(track.scores) == 3 and all(s is not None for s in track.scores)
        assert [len(e) for e in track.example_scores] == [len(track.example_scores[0])] * 3
        assert track.scores == pytest.approx([float(np.mean(e)) for e in track.example_scores])
    kl, agreement = result.retention["general/kl"], result.retention["general/agreement"]
    assert kl.scores[0] == 0 and agreement.scores[0] == 1  # the base against itself
    assert kl.scores[-1] > 0.01 and agreement.scores[-1] < 1  # training moved the model away from the base
    assert not kl.higher_is_better and result.retention["fruits"].higher_is_better
    assert {e["retention_seconds"] > 0 for e in result.details} == {True}


def test_base_row_is_the_base_model_and_later_rows_the_trained_one(run):
    """Independent computations: the suite on a fresh copy of the base model, and the trainer's own evaluation of the
    held-out task with the final adapters."""
    trainer, result, tokenizer, _ = run
    base, _ = tiny_model("llama", tokenizer)
    labels = sorted({label for task in trainer.tasks for label in task.labels})
    own = evaluate_general_ability(base, tokenizer, limit=3, labels=labels, chat_template="off", **GeneralRetention.QUICK)
    assert result.retention["general/facts"].example_scores[0] == own.facts
    assert result.retention["general/leak"].example_scores[0] == own.leak
    assert trainer.retention[0].reference.chat_answer_ids == own.chat_answer_ids  # the base's answers, KL's reference
    fruits = result.retention["fruits"]
    evaluation = trainer.evaluate_tasks([trainer.retention[1].task])[trainer.evaluation_method][0]
    assert fruits.example_scores[-1] == evaluation.example_scores


def test_logs_card_json_and_table_show_the_retention_block(run):
    trainer, result, _, tmp_path = run
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {f"eval_retention_{name}" for name in result.retention} <= logged
    trainer.save_continual(str(tmp_path / "final"))
    state, _ = read_state(tmp_path / "final")
    assert list(state["result"]["retention"]) == list(result.retention)
    card = str(render_model_card(state))
    assert "## Beyond the tasks: retention (never trained)" in card and "| `general/kl` | kl (lower is better) | 0.000 |" in card
    assert "Retention (never trained" in result.format_table()


def test_continuing_a_saved_run_keeps_measuring_against_the_same_base(run, tmp_path):
    trainer, result, tokenizer, folder = run
    trainer.save_continual(str(folder / "saved"))
    model, _ = tiny_model("llama", tokenizer)
    again = ContinualTrainer.from_continual(str(folder / "saved"), model, training_args(tmp_path, num_train_epochs=1),
                                            processing_class=tokenizer)  # fmt: skip
    assert [s.name for s in again.retention] == ["general:3", "fruits"]
    assert again.retention[0].reference.answers == trainer.retention[0].reference.answers
    later = synthetic_task("colors", seed=7)
    later.name = "colors_again"
    continued = again.train_task(later)
    for name, track in continued.retention.items():
        assert len(track.scores) == 4 and track.scores[:3] == result.retention[name].scores  # the base row kept
    assert continued.retention["general/kl"].scores[-1] > 0


def test_a_run_that_merges_into_the_base_keeps_the_suite_agreement_and_kl(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, config=IncLoraConfig(r=4, lora_alpha=8, merge_finished_adapters=True),
                           retention_tasks=["general:2"])  # fmt: skip
    result = trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    # each task's adapter is merged into the base at its end: disabling adapters no longer gives the base, so KL and
    # token agreement are taken against what the base's measurement kept (its top-k distributions and most likely
    # tokens), and the parts read off the answers go on
    kl = result.retention["general/kl"].scores
    assert kl[0] == 0.0 and all(score > 0 for score in kl[1:])
    assert result.retention["general/agreement"].drift() is not None
    for name in ("general/facts", "general/leak", "general/agreement", "general/kl"):
        assert None not in result.retention[name].scores
    # against the exact KL from an independent copy of the base (the same seed builds the same weights)
    (source,) = trainer.retention
    base, _ = tiny_model("llama", tokenizer, seed=0)
    exact = evaluate_general_ability(trainer.peft_model, tokenizer, reference=source.reference, base_model=base,
                                     limit=2, chat_template="on" if trainer.chat else "off", batch_size=32,
                                     **GeneralRetention.QUICK)  # fmt: skip
    assert np.mean(result.retention["general/kl"].example_scores[-1]) == pytest.approx(np.mean(exact.kl), rel=0.2)


def test_lm_eval_tasks_as_retention_on_the_model_in_memory(tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from peft_continual.lm_eval_bridge import lm_eval_scores

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(TASKS_DIR)  # lm-eval resolves the YAML's data files against the working directory
    trainer = make_trainer(tokenizer, tmp_path, retention_tasks=["lm_eval:pc_colors"], lm_eval_include_path=TASKS_DIR,
                           lm_eval_limit=6)  # fmt: skip
    result = trainer.train_continual([synthetic_task("colors"), synthetic_task("animals")])
    track = result.retention["lm_eval:pc_colors/acc,none"]
    assert track.source == "lm_eval:pc_colors" and len(track.scores) == 3 and len(track.example_scores[0]) == 6
    base, _ = tiny_model("llama", tokenizer)  # independent: lm-eval on a fresh copy of the base model
    own = lm_eval_scores(base, tokenizer, ["pc_colors"], include_path=TASKS_DIR, limit=6)["pc_colors"]
    assert track.example_scores[0] == own["per_example"]["acc,none"]
