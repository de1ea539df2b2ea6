"""The benchmark runners end to end on a tiny model: finished runs are skipped, interrupted ones resume and end
exactly like uninterrupted ones, the plan runner finds the missing runs and projects their cost, and the GPU
profile's dry run goes through the same code path on the CPU."""

import copy
import gzip
import re
import textwrap
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TASK_WORDS, make_tokenizer, synthetic_rows, tiny_model
from peft_continual import GENERATION_ORDER, ContinualTrainer
from peft_continual.statistics import RunScores
from peft_continual.tasks import fit_max_new_tokens, tokenize_task

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import accuracy  # noqa: E402
import plan  # noqa: E402

# Standard CL order 1 names, backed by synthetic keyword tasks (the real data is not needed to test the runner).
FAKE = {"dbpedia": ("TC", "colors"), "amazon": ("SC", "animals"), "yahoo": ("TC", "fruits"), "agnews": ("TC", "colors")}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cl_benchmark")
    for seed, (name, (kind, words)) in enumerate(FAKE.items()):
        folder = root / kind / name
        folder.mkdir(parents=True)
        for split, n in (("train", 16), ("test", 6)):
            rows = [{"sentence": r["text"], "label": r["label"]} for r in synthetic_rows(words, n, seed + 100 * len(split))]
            (folder / f"{split}.json").write_text(json.dumps(rows))
        (folder / "labels.json").write_text(json.dumps(sorted(TASK_WORDS[words])))
    return root


def tiny_config(data_dir, method: str) -> dict:
    config = accuracy.load_experiment(method, [])
    config.update(threads=1)
    config["data"] = {"data_dir": str(data_dir), "max_train_per_label": 4, "max_eval_samples": 6}
    config["trainer"]["max_source_length"] = 128
    config["training"].update(per_device_train_batch_size=4, num_train_epochs=4, learning_rate=2e-2, logging_steps=50)
    config["lora"].update(r=4, lora_alpha=8)
    if method == "nlora":
        config["method"]["collision_lambda"] = 0.01  # the SmolLM2 default would stop a tiny model from learning
    if method == "osf":
        config["osf"]["effective_rank"] = [1, 0.25, 0.5, 0.75]
    return config


class Loader:
    """The tiny model and tokenizer, counting how often the runner asks for them."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        tokenizer = make_tokenizer()
        return tiny_model("llama", tokenizer)[0], tokenizer


def run(method, config, root, **kwargs):
    return accuracy.run_benchmark(method, 1, 0, config=config, results=root / "results", runs=root / "runs",
                                  save_steps=1, **kwargs)  # fmt: skip


def interrupt_at_call(monkeypatch, owner, name, call):
    """Make ``owner.name`` raise at its ``call``-th call (a crash after some tasks are done)."""
    original, count = getattr(owner, name), {"n": 0}

    def failing(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            raise KeyboardInterrupt("interrupted for the test")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


@pytest.mark.parametrize("method, owner, name, call", [
    ("nlora", ContinualTrainer, "training_step", 8 + 3),  # task 2's third step: resumes from its checkpoint-2
    ("osf", accuracy, "evaluate_all", 3),  # zero-shot, task 1, then task 2's evaluation: task 2 starts over
])  # fmt: skip
def test_interrupted_run_resumes_and_finished_run_is_skipped(tmp_path, data_dir, monkeypatch, method, owner, name, call):
    config = tiny_config(data_dir, method)
    reference = json.loads(run(method, copy.deepcopy(config), tmp_path / "reference", load_model=Loader()).read_text())

    with monkeypatch.context() as patch:
        interrupt_at_call(patch, owner, name, call)
        with pytest.raises(KeyboardInterrupt):
            run(method, copy.deepcopy(config), tmp_path, load_model=Loader())
    path = accuracy.result_path(method, 1, 0, [], tmp_path / "results")
    assert not path.exists() and len(list((tmp_path / "runs").iterdir())) == 1

    resumed = json.loads(run(method, copy.deepcopy(config), tmp_path, load_model=Loader()).read_text())
    assert resumed["benchmark"]["resumed"] and not reference["benchmark"]["resumed"]
    assert resumed["accuracy_matrix"] == reference["accuracy_matrix"]
    # a task resumed mid-way reports the loss of its remaining steps only; the tasks after it must match
    losses = [[d["train_loss"] for d in r["details"][2:]] for r in (resumed, reference)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    if method == "nlora":  # the final adapters themselves, through the collision analysis of their dW
        flat = [[v for row in r["collision"]["overlap"] for v in row if v is not None] for r in (resumed, reference)]
        assert flat[0] == pytest.approx(flat[1], rel=1e-4)
    assert not list((tmp_path / "runs").iterdir())  # the run folder goes once the result is written

    loader = Loader()
    assert run(method, copy.deepcopy(config), tmp_path, load_model=loader) == path
    assert loader.calls == 0  # finished with the same config: not run again
    changed = copy.deepcopy(config)
    changed["training"]["learning_rate"] = 3e-2
    run(method, changed, tmp_path, load_model=loader)
    assert loader.calls == 1 and accuracy.stored_hash(path) == accuracy.config_hash(method, 1, 0, changed)


def test_a_run_folder_is_held_by_one_process(tmp_path):
    """A plan started twice must not run one run in two processes (the second would resume from checkpoints the
    first is still writing); the check is an OS lock, released when the holder ends however it ends."""
    folder = tmp_path / "runs" / "nlora_order1_seed0-abc"
    code = f"import sys, time; sys.path.insert(0, {str(BENCHMARKS)!r}); import accuracy, pathlib\n" \
           f"with accuracy.claim(pathlib.Path({str(folder)!r})):\n    print('held', flush=True); time.sleep(30)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match="being run by another process"):
            with accuracy.claim(folder):
                pass
    finally:
        holder.kill()
        holder.wait()
    with accuracy.claim(folder):  # the holder is gone: the folder is free again
        assert folder.is_dir()


@pytest.mark.parametrize("method", ["seqlora", "mtl", "osf", "osf_continual"])
def test_every_runner_scores_both_protocols_per_example(tmp_path, data_dir, method):
    """One training run, two protocols: the primary matrix and ``secondary["rank"]``, each with per-example
    scores (what the intervals need) and, but for the joint bound, the cached zero-shot row of its own protocol."""
    config = tiny_config(data_dir, method)
    config["trainer"]["evaluation_method"] = ["generate", "rank"]
    result = json.loads(run(method, config, tmp_path, load_model=Loader()).read_text())
    assert result["evaluation_method"] == "generate" and list(result["secondary"]) == ["rank"]
    for protocol in (None, "rank"):
        scores = RunScores.from_result(result, protocol)  # validates shapes: diagonal and last row scored
        scored = result if protocol is None else result["secondary"][protocol]
        for row, example_row in zip(scored["accuracy_matrix"], scored["example_scores"]):
            for value, examples in zip(row, example_row):
                assert (value is None) == (examples is None)
                if examples is not None:
                    assert len(examples) == 6 and value == pytest.approx(sum(examples) / 6)
        assert (scores.zero_shot_example_scores is None) == (method == "mtl")
        assert scored["average_accuracy"] is not None
    # every runner keeps its answers (without prompts) for diagnosis, and they agree with the scores
    predictions = tmp_path / "results" / "predictions" / f"{method}_order1_seed0.jsonl.gz"
    with gzip.open(predictions, "rt") as f:
        rows = [json.loads(line) for line in f]
    stages = sorted({r["after"] for r in rows})
    assert stages == (["after_1_dbpedia+amazon+yahoo+agnews"] if method == "mtl" else
                      ["after_1_dbpedia", "after_2_amazon", "after_3_yahoo", "after_4_agnews"])  # fmt: skip
    for protocol in ("generate", "rank"):
        scored = result if protocol == "generate" else result["secondary"][protocol]
        final = [r for r in rows if r["after"] == stages[-1] and r["task"] == "dbpedia" and r["protocol"] == protocol]
        assert [r["score"] for r in final] == scored["example_scores"][-1][0]
    assert all(r["target"] for r in rows)
    import diagnose

    table = diagnose.report(predictions, data_dir)
    assert table.startswith(f"#### {method}_order1_seed0") and "| label of agnews |" in table
    cache = sorted(p.name for p in (tmp_path / "results" / "zero_shot").glob("*.json")) if method != "mtl" else []
    assert [name.split("_")[2] for name in cache] == ([] if method == "mtl" else ["generate", "rank"])
    if method != "mtl":  # a rank-only run at another training scale reuses the cached rank row
        config = tiny_config(data_dir, "inclora")
        config["data"]["max_train_per_label"] = 2
        config["trainer"]["evaluation_method"] = "rank"
        other = json.loads(run("inclora", config, tmp_path, load_model=Loader()).read_text())
        assert other["zero_shot_example_scores"] == result["secondary"]["rank"]["zero_shot_example_scores"]
        assert len(list((tmp_path / "results" / "zero_shot").glob("*.json"))) == 2


@pytest.fixture(scope="module")
def generation_data_dir(tmp_path_factory):
    """The two benchmark files the offline generation sequence derives its text tasks from, in their format."""
    root = tmp_path_factory.mktemp("cl_benchmark_generation")
    reviews = [f"Title: great sturdy product {i}\nText: the {w} arrived quickly and works well" for i, w in
               enumerate(["carrier", "blender", "lantern", "speaker", "charger", "monitor", "toaster", "printer"])]
    entries = [f"Title: Entry {i}\nText: The {w} Company is a Canadian manufacturer of sturdy kitchen products." for i, w in
               enumerate(["Maple", "Cedar", "Birch", "Aspen", "Spruce", "Willow", "Hazel", "Alder"])]
    for folder, sentences in (("SC/amazon", reviews), ("TC/dbpedia", entries)):
        (root / folder).mkdir(parents=True)
        for split in ("train", "test"):
            (root / folder / f"{split}.json").write_text(json.dumps([{"sentence": t, "label": "x"} for t in sentences]))
    return root


@pytest.mark.parametrize("method", ["seqlora", "mtl"])
def test_generation_sequence_runs_with_its_own_metrics_and_zero_shot_row(tmp_path, generation_data_dir, method):
    """``--base generation.json``: amazon-title -> arithmetic -> spelling, each scored by its own metric; the runners
    outside ContinualTrainer (zero-shot cache, MTL) decode within the budget the trainer would give each task."""
    config = accuracy.load_experiment(method, [], "generation.json")
    config.update(threads=1)
    config["data"].update(data_dir=str(generation_data_dir), max_train_samples=8, max_eval_samples=4)
    config["trainer"].update(chat_template="off", max_new_tokens=6)
    config["training"].update(num_train_epochs=1, logging_steps=50)
    config["lora"].update(r=4, lora_alpha=8)
    result = json.loads(run(method, config, tmp_path, load_model=Loader()).read_text())
    assert result["task_names"] == GENERATION_ORDER and result["evaluation_method"] == "generate"
    assert result["task_metrics"] == ["rouge_l", "exact_match", "edit_similarity"] and not result.get("secondary")
    scores = RunScores.from_result(result)  # per-example scores for the intervals
    assert len(result["accuracy_matrix"]) == (1 if method == "mtl" else 3)
    if method != "mtl":
        assert len(result["zero_shot"]) == 3 and all(0 <= v <= 1 for v in result["zero_shot"])
        assert scores.zero_shot_example_scores is not None
    # the decoding budget the runners outside the trainer use: the trainer's (the longest reference, a floor), capped
    tokenizer, tasks = make_tokenizer(), accuracy.load_tasks(config, 1, 0)
    accuracy.fit_generation_budgets(config, tokenizer, tasks)
    for task in tasks:
        expected = copy.deepcopy(task)
        expected.max_new_tokens = None
        features = tokenize_task(tokenizer, task, config["trainer"]["max_source_length"])
        fit_max_new_tokens(tokenizer, expected, features, 6)
        assert task.max_new_tokens == expected.max_new_tokens == 6

    import diagnose  # the kept answers are diagnosed against this sequence's tasks, which have no label options

    kept = tmp_path / "results" / "predictions" / f"{method}_order1_seed0.jsonl.gz"
    table = diagnose.report(kept, generation_data_dir)
    assert "| task | wrong | empty | copied from the input | other text |" in table
    body = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| ")][1:]
    assert body and {cells[0] for cells in body} <= set(GENERATION_ORDER)
    assert all(int(cells[1]) == sum(map(int, cells[2:])) for cells in body)
    rows = diagnose.read_answers(kept)
    rows[0]["target"] += " (edited)"
    with gzip.open(kept, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit, match="does not match the test set rebuilt from its result's config"):
        diagnose.report(kept, generation_data_dir)

    with pytest.raises(SystemExit, match=r"generation sequence has orders \[1\], not 2"):
        accuracy.run_benchmark(method, 2, 0, config=config, results=tmp_path / "results", runs=tmp_path / "runs",
                               load_model=Loader())  # fmt: skip


def test_plan_commits_a_result_with_its_kept_answers_and_the_zero_shot_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "RESULTS", tmp_path)
    run_ = plan.Run("replay", 1, 0, base="generation.json")
    assert run_.outputs == []
    root = tmp_path / "generation"
    for path in (run_.path, root / "predictions" / "replay_order1_seed0.jsonl.gz", root / "zero_shot" / "x.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert run_.outputs == [run_.path, root / "predictions" / "replay_order1_seed0.jsonl.gz", root / "zero_shot"]


def test_another_base_experiment_keeps_its_results_apart():
    assert accuracy.results_root("default.json") == accuracy.RESULTS
    assert accuracy.results_root("generation.json") == accuracy.RESULTS / "generation"
    run_ = plan.expand({"runs": [{"method": "replay", "order": 1, "seed": 0, "base": "generation.json"}]})[0]
    assert run_.path == accuracy.RESULTS / "generation" / "accuracy" / "replay_order1_seed0.json"
    assert run_.command(None)[-2:] == ["--base", "generation.json"]
    assert run_.name == "generation_replay_order1_seed0" and plan.Run("replay", 1, 0).name == "replay_order1_seed0"
    assert run_.config["data"]["sequence"] == "generation"
    assert plan.Run("replay", 1, 0).path == accuracy.RESULTS / "accuracy" / "replay_order1_seed0.json"
    assert "--base" not in plan.Run("replay", 1, 0).command(None)


def test_diagnosis_sorts_wrong_answers_by_whose_label_they_are():
    import diagnose

    labels = {"topics": ["Company", "Film"], "news": ["World", "Sports"], "titles": []}
    inputs = {"topics": ["Acme builds trains in Ohio."] * 8, "news": ["Rain in Spain."], "titles": ["A sturdy blender."] * 2}

    def row(after, task, prediction, score, protocol="generate", example=0):
        return {"after": after, "task": task, "protocol": protocol, "prediction": prediction, "score": score,
                "example": example}  # fmt: skip

    rows = [row("after_2_news", "topics", "film.", 0.0), row("after_2_news", "topics", " sports", 0.0),
            row("after_2_news", "topics", "World", 0.0), row("after_2_news", "topics", "", 0.0),
            row("after_2_news", "topics", "Builds trains!", 0.0), row("after_2_news", "topics", "builds in", 0.0),
            row("after_2_news", "topics", "Company", 1.0), row("after_2_news", "topics", "World", 0.0, "rank"),
            row("after_1_topics", "topics", "World", 0.0), row("after_2_news", "news", "Sports", 0.0),
            row("after_2_news", "titles", "sturdy blender", 0.3, example=1), row("after_2_news", "titles", "Film", 0.0)]  # fmt: skip
    kinds = diagnose.wrong_answers(rows, labels, inputs)
    # rank rows, right answers and earlier stages are ignored; "builds in" is not a contiguous span of the input
    assert kinds["topics"] == {"own label": 1, "label of news": 2, "empty": 1, "copied from the input": 1, "other text": 1}
    assert kinds["news"] == {"own label": 1}
    assert kinds["titles"] == {"copied from the input": 1, "label of topics": 1}  # a generation task has no own label
    assert diagnose.wrong_answers(rows, labels)["topics"]["other text"] == 2  # without inputs nothing counts as copied


def test_diagnosis_names_a_missing_run_before_reporting_any(tmp_path, monkeypatch, capsys):
    import diagnose

    monkeypatch.setattr(sys, "argv", ["diagnose.py", str(tmp_path / "osf_order1_seed0.jsonl.gz")])
    with pytest.raises(SystemExit, match="no kept answers at .*osf_order1_seed0.jsonl.gz; accuracy.py keeps them"):
        diagnose.main()
    kept = tmp_path / "predictions" / "osf_order1_seed0.jsonl.gz"  # answers whose result JSON is gone
    kept.parent.mkdir()
    kept.write_bytes(gzip.compress(b"{}\n"))
    monkeypatch.setattr(sys, "argv", ["diagnose.py", str(kept)])
    with pytest.raises(SystemExit, match="no result beside .*osf_order1_seed0.jsonl.gz: diagnose.py rebuilds"):
        diagnose.main()
    assert capsys.readouterr().out == ""


def test_config_hash_covers_what_a_result_depends_on():
    config = accuracy.load_experiment("nlora", [])
    base = accuracy.config_hash("nlora", 1, 0, config)
    assert base == accuracy.config_hash("nlora", 1, 0, copy.deepcopy(config))
    assert base != accuracy.config_hash("nlora", 1, 1, config) != accuracy.config_hash("olora", 1, 0, config)
    assert base != accuracy.config_hash("nlora", 1, 0, accuracy.load_experiment("nlora", ["method.collision_lambda=1"]))


# ----------------------------------------------------------------------------------------------- plan.py


def test_plan_expands_entries_and_names_bad_ones():
    runs = plan.expand({"runs": [{"methods": ["seqlora", "nlora"], "orders": [1, 2], "seeds": [0, 1]},
                                 {"method": "nlora", "order": 1, "seed": 0},  # a duplicate: listed once
                                 {"method": "nlora", "order": 1, "seed": 0, "set": ["method.collision_lambda=5"]}]})  # fmt: skip
    assert len(runs) == 9
    assert runs[0] == plan.Run("seqlora", 1, 0) and runs[-1].overrides == ("method.collision_lambda=5",)
    assert "sweeps" in str(runs[-1].path)
    for bad, message in (({"runs": []}, "non-empty"), ({"runs": [{"method": "ewc", "order": 1, "seed": 0}]}, "entry 0"),
                         ({"runs": [{"method": "nlora", "order": 4, "seed": 0}]}, "'order'"),
                         ({"runs": [{"method": "nlora", "order": 1, "seed": 0, "lr": 1}]}, "keys among"),
                         ({"runs": [{"method": "nlora", "order": 1, "seed": 0, "base": "nope.json"}]}, "nope.json")):  # fmt: skip
        with pytest.raises(SystemExit, match=message):
            plan.expand(bad)


def test_plan_counts_steps_and_evaluated_examples(data_dir):
    config = tiny_config(data_dir, "nlora")
    config["data"].update(max_train_per_label=4, max_eval_samples=4)  # 2 labels x 4 = 8 training examples per task
    config["training"].update(per_device_train_batch_size=4, num_train_epochs=1)
    # after tasks 1-3: the task just trained and the next one; after task 4: all four
    assert plan.work("nlora", 1, 0, config) == {"steps": 4 * 2, "eval_examples": 4 * (2 + 2 + 2 + 4),
                                                "zero_shot_examples": 4 * 4}  # fmt: skip
    config["trainer"].update(evaluate_unseen=False, evaluate_seen="all")  # the lower triangle
    config["training"].update(num_train_epochs=2, per_device_train_batch_size=3)  # ceil(8 / 3) = 3 steps per epoch
    assert plan.work("nlora", 1, 0, config)["eval_examples"] == 4 * (1 + 2 + 3 + 4)
    assert plan.work("nlora", 1, 0, config)["steps"] == 4 * 3 * 2
    assert plan.work("mtl", 1, 0, config) == {"steps": 11 * 2, "eval_examples": 16, "zero_shot_examples": 0}


def test_plan_unit_costs_from_results_and_measurement(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "RESULTS", tmp_path)
    run = plan.Run("nlora", 1, 0)
    payload = {"details": [{"train_seconds": 6.0, "steps": 3, "eval_examples": [2, 2]},
                           {"train_seconds": 4.0, "steps": 2, "eval_examples": [2, 2, 2]}],
               "benchmark": {"method": "nlora", "config": run.config, "wall_seconds": 30.0}}  # fmt: skip
    (tmp_path / "accuracy").mkdir()
    (tmp_path / "accuracy" / "x.json").write_text(json.dumps(payload))
    observed = plan.costs_from_results()
    key = plan.cost_key(run.config)
    assert observed["step"][key, "nlora"] == pytest.approx(10.0 / 5)
    assert plan.protocol_key(run.config) == "generate+rank"  # an example costs one scoring per protocol
    assert observed["eval"][key, "generate+rank"] == pytest.approx((30.0 - 10.0) / 10)
    amount = {"steps": 7, "eval_examples": 11, "zero_shot_examples": 5}
    seconds, source = plan.price(run, amount, observed, {}, {})
    assert seconds == pytest.approx(plan.LOAD_SECONDS + 7 * 2.0 + 16 * 2.0) and source == "results"
    measured = {key: {"step_seconds": 3.0, "eval_seconds_per_example": {"rank": 0.5, "generate": 1.5}}}
    seconds, source = plan.price(plan.Run("olora", 1, 0), amount, observed, measured, {"olora": 1.1})
    assert seconds == pytest.approx(plan.LOAD_SECONDS + 7 * 3.0 * 1.1 + 16 * 2.0) and "step_time" in source
    assert plan.price(plan.Run("olora", 1, 0), amount, observed, {}, {"olora": 1.1}) is None
    no_results = {"step": {}, "eval": {}}  # eval priced from the measurement: the sum over the two protocols
    seconds, _ = plan.price(plan.Run("olora", 1, 0), amount, no_results, measured, {"olora": 1.1})
    assert seconds == pytest.approx(plan.LOAD_SECONDS + 7 * 3.0 * 1.1 + 16 * (0.5 + 1.5))


def test_plan_prices_evaluation_from_the_newest_results(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "RESULTS", tmp_path)
    monkeypatch.setattr(plan, "RECENT_EVAL_RUNS", 2)
    run = plan.Run("nlora", 1, 0)
    (tmp_path / "accuracy").mkdir()
    # eval seconds per example 9 (oldest), 1 and 3: the two newest price it; training is pooled over all three
    for name, date, wall in (("a", "2026-01-03", 12.0), ("b", "2026-01-01", 28.0), ("c", "2026-01-02", 4.0)):
        payload = {"details": [{"train_seconds": 1.0, "steps": 1, "eval_examples": [3]}],
                   "benchmark": {"method": "nlora", "config": run.config, "wall_seconds": wall,
                                 "environment": {"date": date}}}  # fmt: skip
        (tmp_path / "accuracy" / f"{name}.json").write_text(json.dumps(payload))
    observed = plan.costs_from_results()
    key = plan.cost_key(run.config)
    assert observed["eval"][key, "generate+rank"] == pytest.approx((11.0 + 3.0) / 6)
    assert observed["step"][key, "nlora"] == pytest.approx(1.0)


def test_plan_step_ratios_merge_the_step_time_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "RESULTS", tmp_path)
    assert plan.step_ratios() == {"seqlora": 1.0, "mtl": 1.0}  # plain LoRA is the unit, measured or not
    table = lambda rows: json.dumps({"results": {"cpu": {v: {"ratio": r} for v, r in rows.items()}}})  # noqa: E731
    (tmp_path / "step_time.json").write_text(table({"lora": 1.0, "inclora@4": 1.1, "osf@1": 2.0}))
    (tmp_path / "step_time_task15.json").write_text(table({"inclora@4": 9.0, "osf@1": 9.0, "olora@4": 1.3}))
    ratios = plan.step_ratios()  # the full table wins; a later narrow one only fills in what it lacks
    assert (ratios["inclora"], ratios["osf"], ratios["olora"]) == (1.1, 2.0, 1.3) and "ilora" not in ratios


def test_plan_measures_unit_costs_with_the_runs_code(data_dir):
    costs = plan.measure(tiny_config(data_dir, "seqlora"), Loader(), steps=2, examples=4)
    assert costs["step_seconds"] > 0
    assert set(costs["eval_seconds_per_example"]) == {"rank", "generate"}
    assert all(v > 0 for v in costs["eval_seconds_per_example"].values())


def test_plan_runs_only_missing_runs_jobs_at_a_time(tmp_path, monkeypatch):
    """accuracy.py is replaced by a script that writes a finished result and records when it ran."""
    monkeypatch.setattr(plan, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(plan, "RUNS", tmp_path / "runs")
    runs = plan.expand({"runs": [{"methods": ["seqlora", "inclora", "olora", "nlora"], "order": 1, "seed": 0}]})
    done = runs[1]
    done.path.parent.mkdir(parents=True)
    done.path.write_text(json.dumps({"benchmark": {"method": done.method, "order": 1, "seed": 0, "config": done.config}}))
    script = tmp_path / "fake_run.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        path, log, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        open(log, "a").write(f"start {time.time()}\\n"); time.sleep(0.5)
        open(path, "w").write(json.dumps(payload)); open(log, "a").write(f"end {time.time()}\\n")
    """))  # fmt: skip
    timeline = tmp_path / "timeline"

    def command(run, model_cache):
        payload = {"benchmark": {"method": run.method, "order": run.order, "seed": run.seed, "config": run.config}}
        return [sys.executable, str(script), str(run.path), str(timeline), json.dumps(payload)]

    monkeypatch.setattr(plan.Run, "command", command)
    assert plan.run_missing(runs, jobs=2, model_cache=None, nice=0, commit=False) == 0
    assert all(r.finished for r in runs)
    events = sorted((float(t), kind) for kind, t in (line.split() for line in timeline.read_text().splitlines()))
    assert sum(kind == "start" for _, kind in events) == 3  # the finished run was not started again
    running, most = 0, 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2

    # with a deadline, only the runs whose projected time fits start (a cheaper one after a refused one does too)
    later = plan.expand({"runs": [{"methods": ["replay", "ilora", "mtl"], "order": 1, "seed": 0}]})
    seconds = {later[0]: 3600.0, later[1]: None, later[2]: 60.0}
    assert plan.run_missing(later, jobs=2, model_cache=None, nice=0, commit=False, deadline=time.time() + 600,
                            seconds=seconds) == 0  # fmt: skip
    assert [r.finished for r in later] == [False, False, True]


# ----------------------------------------------------------------------------------------------- gpu_profile.py


def test_gpu_profile_dry_run_goes_through_every_method(tmp_path, data_dir):
    model_dir = tmp_path / "tiny"
    tokenizer = make_tokenizer()
    tiny_model("llama", tokenizer)[0].save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    results = tmp_path / "results"
    command = [sys.executable, str(BENCHMARKS / "gpu_profile.py"), "--dry-run", "--orders", "1", "--model",
               str(model_dir), "--data-dir", str(data_dir), "--results-dir", str(results), "--runs-dir",
               str(tmp_path / "runs")]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    profile = json.loads((results / "profile.json").read_text())
    assert profile["dry_run"] and not profile["skipped"]
    assert [r["run"] for r in profile["runs"]] == [f"{m}_order1_seed0" for m in plan_methods()]
    for method in plan_methods():
        result = json.loads((results / "accuracy" / f"{method}_order1_seed0.json").read_text())
        assert len(result["accuracy_matrix"]) == (1 if method == "mtl" else 4)
        assert result["benchmark"]["config"]["device"] == "cpu" and result["benchmark"]["config"]["data"]["max_train_per_label"] == 1
        assert sum(d["steps"] for d in result["details"]) > 0
    assert not list((tmp_path / "runs").iterdir())


def plan_methods():
    import gpu_profile

    return gpu_profile.PRIORITY


# ----------------------------------------------------------------------------------------------- summarize.py


def scored_result(method: str, seed: int, right: int, protocol: str = "generate") -> dict:
    """A 2-task run with 40 test examples per task; the final row gets ``right`` of each task's examples right."""
    before, after = [1.0] * 30 + [0.0] * 10, [1.0] * right + [0.0] * (40 - right)
    zero = [0.0] * 40
    return {"task_names": ["a", "b"], "evaluation_method": protocol, "accuracy_matrix": [[0.75, 0.0], [right / 40] * 2],
            "zero_shot": [0.0, 0.0], "example_scores": [[before, zero], [after, after]],
            "zero_shot_example_scores": [zero, zero], "average_accuracy": right / 40,
            "benchmark": {"method": method, "order": 1, "seed": seed}}  # fmt: skip


def test_summarize_renders_intervals_and_paired_verdicts():
    import summarize

    runs = [scored_result("nlora", s, 36) for s in (0, 1, 2)] + [scored_result("olora", s, 20) for s in (0, 1, 2)]
    runs += [scored_result("inclora", s, 20) for s in (0, 1)]
    runs.append(scored_result("inclora", 2, 20) | {"example_scores": None})  # an older result: no scores
    table = summarize.interval_table(runs, "generate")
    # estimates: AA 36/40; BWT = forgetting = 36/40 - 30/40 on task a (the only earlier task); FWT 0 - 0
    row = re.search(r"\| nlora \| 1 \| 0,1,2 \| 90\.0 \[(.*?)\] \| \+15\.0 \[.*?\] \| \+0\.0 \[\+0\.0, \+0\.0\] \| -15\.0 \[", table)
    low, high = map(float, row.group(1).split(", "))
    assert low < 90 < high
    assert f"| inclora | 1 | 0,1,2 | {summarize.NO_SCORES} |" in table
    paired = summarize.paired_table(runs, "generate")
    assert re.search(r"\| nlora − olora \| order 1, 3 seed-runs \| \+40\.0 \[\+[0-9.]+, \+[0-9.]+\] \* \(p 0\.000\) \|", paired)
    assert "nlora higher AA" in paired and f"| olora − inclora | order 1, 3 seed-runs | {summarize.NO_SCORES} |" in paired
    assert summarize.paired_table(runs[:3], "generate") == "No pair of compared methods shares a seed yet."
    sections = "\n".join(summarize.statistics_sections(runs))
    assert "generation + normalised exact match" in sections and "label ranking" not in sections
    old = [scored_result("nlora", 0, 36, "rank") | {"example_scores": None}]
    assert "none of these results carries per-example scores" in "\n".join(summarize.statistics_sections(old))


def test_summarize_pairs_each_sweep_point_with_its_default_run():
    import summarize

    def run(right, lam, overrides=(), epochs=2, protocol=("generate", "rank")):
        config = {"data": {"max_train_per_label": 16}, "training": {"num_train_epochs": epochs},
                  "trainer": {"evaluation_method": protocol}, "method": {"collision_lambda": lam}}  # fmt: skip
        result = scored_result("nlora", 0, right)
        result |= {"backward_transfer": right / 40 - 0.75, "forward_transfer": 0.0, "forgetting": 0.0}
        result["benchmark"] |= {"config": config, "overrides": list(overrides), "wall_seconds": 1.0}
        return result

    main = run(20, 0.2)
    better = run(36, 0.05, ["trainer.evaluation_method=generate", "method.collision_lambda=0.05"], protocol="generate")
    other_training = run(36, 0.05, ["method.collision_lambda=0.05", "training.num_train_epochs=1"], epochs=1)
    assert summarize.default_run(better, [main]) is main and summarize.default_run(other_training, [main]) is None
    assert summarize.learned(main) == pytest.approx((0.75 + 0.5) / 2)
    rows = {line.split("|")[4].strip(): line for line in summarize.sweep_table([better], [main]).splitlines()[2:]}
    assert set(rows) == {"`collision_lambda=0.05`", "`collision_lambda=0.2` (main run)"}
    # the sweep point's last row gets 36 of 40 right where the default's gets 20: +40 AA points, paired
    assert re.search(r"\| \+40\.0 \[\+[0-9.]+, \+[0-9.]+\] \* \| \+40\.0 \[", rows["`collision_lambda=0.05`"])
    held_main, held = run(20, 0.2), run(36, 0.05, ["trainer.evaluation_method=generate", "method.collision_lambda=0.05"],
                                        protocol="generate")  # fmt: skip
    for r in (held_main, held):  # the held-out check on order 2: paired with order 2's default, listed after order 1
        r["benchmark"]["order"] = 2
    cells = [line.split("|") for line in summarize.sweep_table([held, better], [held_main, main]).splitlines()[2:]]
    assert [(c[2].strip(), c[4].strip()) for c in cells] == [
        ("1", "`collision_lambda=0.05`"), ("1", "`collision_lambda=0.2` (main run)"),
        ("2", "`collision_lambda=0.05`"), ("2", "`collision_lambda=0.2` (main run)")]  # fmt: skip
    assert summarize.default_run(held, [main, held_main]) is held_main
    lone = summarize.sweep_table([other_training], [main]).splitlines()
    assert len(lone) == 3 and [c.strip() for c in lone[2].split("|")[10:12]] == ["—", "—"]  # ΔAA, ΔBWT: no default
    # the plot: one point per λ; a sweep point at the main run's own λ gives way to the main run (listed last)
    replica, old_main = run(20, 0.2, ["trainer.evaluation_method=generate"], protocol="generate"), run(30, 0.8)
    points = summarize.lambda_points([better, replica, old_main, main])
    assert [(lam, r) for lam, r in points] == [(0.05, better), (0.2, main), (0.8, old_main)]


def test_summarize_targets_are_met_only_when_the_paired_intervals_say_so():
    import summarize

    def target_row(rights):
        runs = [scored_result(m, s, right) for m, right in rights.items() for s in (0, 1, 2)]
        for run in runs[6:9]:  # IncLoRA gets other examples right than the rest: a 1-example gap is then noise
            run["example_scores"][1] = [row[::-1] for row in run["example_scores"][1]]
        return next(line for line in summarize.targets_table(runs).splitlines() if line.startswith("| AA: N-LoRA"))

    assert target_row({"nlora": 38, "olora": 28, "inclora": 18, "seqlora": 8}).endswith("| met |")
    assert target_row({"nlora": 38, "olora": 28, "inclora": 27, "seqlora": 8}).endswith("| not significant |")
    row = target_row({"nlora": 20, "olora": 28, "inclora": 18, "seqlora": 8})
    assert row.endswith("| MISSED |") and "nlora − olora -20.0 [" in row


def test_summarize_target_pairs_on_the_runs_all_its_methods_share():
    """A seed that only two of the chain's methods have must not enter that link's paired difference while the
    values beside it leave it out: the verdict and the numbers it shows must read the same runs."""
    import summarize

    rights = {"nlora": 30, "olora": 20, "inclora": 12, "seqlora": 4}
    runs = [scored_result(m, 0, right) for m, right in rights.items()]
    runs += [scored_result("nlora", 1, 0), scored_result("olora", 1, 40)]  # seed 1 reverses the first link

    row = next(line for line in summarize.targets_table(runs).splitlines() if line.startswith("| AA: N-LoRA"))
    assert "| 1 |" in row and row.endswith("| met |")
    assert f"nlora − olora {summarize.interval(summarize.paired_differences(runs[:4], 'nlora', 'olora', 'generate')[1]['average_accuracy'])}" in row
    assert summarize.paired_differences(runs, "nlora", "olora", "generate")[1]["average_accuracy"].estimate < 0


def test_summarize_best_of_ours_counts_only_methods_run_wherever_osf_ran():
    """A method run on fewer seeds (a new composition) must not shrink "our best ahead of OSF" to its seeds."""
    import summarize

    rights = {"seqlora": 8, "inclora": 18, "olora": 20, "nlora": 24, "replay": 30, "ilora": 32, "osf": 26}
    runs = [scored_result(m, s, right) for m, right in rights.items() for s in (0, 1, 2)]
    runs.append(scored_result("nlora_replay", 0, 38))  # the best, but on seed 0 only

    def best_row(runs):
        return next(line for line in summarize.targets_table(runs).splitlines() if line.startswith("| our best"))

    assert best_row(runs).startswith("| our best method (ilora) ahead of OSF in AA | 3 |")
    runs += [scored_result("nlora_replay", s, 38) for s in (1, 2)]
    assert best_row(runs).startswith("| our best method (nlora_replay) ahead of OSF in AA | 3 |")


def test_summarize_pairs_the_joint_bound_with_each_methods_final_row():
    """MTL has one row (after its single training): it is paired with the other run's last row, AA only."""
    import summarize

    nlora = scored_result("nlora", 0, 20)
    mtl = scored_result("mtl", 0, 30)
    for key in ("accuracy_matrix", "example_scores"):
        mtl[key] = mtl[key][-1:]
    mtl["zero_shot"] = mtl["zero_shot_example_scores"] = None
    shared, diff = summarize.paired_differences([nlora, mtl], "mtl", "nlora", "generate")
    assert shared == [(1, 0)] and diff["average_accuracy"].estimate == pytest.approx((30 - 20) / 40)
    assert diff["backward_transfer"] is None  # one row: nothing to forget


def test_interference_ablates_each_later_adapter_and_measures_its_output_on_earlier_inputs(tmp_path, data_dir, monkeypatch):
    """Checked against independent computations: the score without adapter t is that of a copy whose t has a zero
    update, and ||dW_t x|| is the dense (scaling * B @ A) product applied to the inputs the layer really received."""
    import interference
    from peft_continual.adapters import lora_layers

    config = tiny_config(data_dir, "inclora")
    config["trainer"].update(evaluation_method="generate", evaluate_unseen=False)
    tokenizer = make_tokenizer()
    model = tiny_model("llama", tokenizer)[0]
    tasks = accuracy.load_tasks(config, 1, 0)
    trained, result = interference.train(config, model, tokenizer, tasks, tmp_path / "run", 0)
    report = interference.ablate(trained, tokenizer, tasks, result, config)
    assert [(e["task"], e["adapter_off"]) for e in report] == [
        ("dbpedia", "amazon"), ("dbpedia", "yahoo"), ("dbpedia", "agnews"),
        ("amazon", "yahoo"), ("amazon", "agnews"), ("yahoo", "agnews")]  # fmt: skip
    assert [e["final"] for e in report[:3]] == [100 * result["accuracy_matrix"][-1][0]] * 3
    names = list(trained.peft_config)
    for entry, t in zip(report[:3], (1, 2, 3)):
        silenced = copy.deepcopy(trained)
        for _, layer in lora_layers(silenced):
            torch.nn.init.zeros_(layer.lora_B[names[t]].weight)
        scores = interference.generate_scores(silenced, tokenizer, tasks[0], config, names)
        assert entry["without_adapter"] == pytest.approx(100 * scores.mean())
        g = entry["gain"]
        assert g["delta"] == pytest.approx(entry["without_adapter"] - entry["final"]) and g["low"] <= g["delta"] <= g["high"]
    inputs = {}
    layers = [layer for _, layer in lora_layers(trained)]
    handles = [layer.register_forward_pre_hook(lambda m, a, k=k: inputs.setdefault(k, []).append(a[0])) for k, layer in enumerate(layers)]
    norms = interference.output_norms(trained, tokenizer, tasks[0], names, config)
    for handle in handles:
        handle.remove()
    encoded = interference.encode_eval(tokenizer, tasks[0], config["trainer"]["max_source_length"]).prompts
    batch = config["training"]["per_device_eval_batch_size"]
    masks = [interference.left_pad(encoded[s:s + batch], tokenizer.pad_token_id)[1].bool() for s in range(0, len(encoded), batch)]
    for k, layer in enumerate(layers):
        for a, name in enumerate(names):
            delta = (layer.scaling[name] * layer.lora_B[name].weight @ layer.lora_A[name].weight).detach()
            expected = sum(float((x[m] @ delta.T).pow(2).sum()) for x, m in zip(inputs[k], masks))
            assert norms[k, a] == pytest.approx(expected, rel=1e-4)
    assert norms.min() > 0
    import summarize  # renders every interference result into RESULTS.md's generated part

    (tmp_path / "interference").mkdir()
    payload = {"method": "inclora", "order": 1, "seed": 0, "ablations": report}
    (tmp_path / "interference" / "inclora_order1_seed0.json").write_text(json.dumps(payload))
    monkeypatch.setattr(summarize, "INTERFERENCE", tmp_path / "interference")
    section = "\n".join(summarize.interference_sections())
    assert "**inclora**, order 1, seed 0" in section and section.count("| dbpedia |") == 3


def test_retention_table_pairs_runs_on_the_same_items(tmp_path, capsys, monkeypatch):
    """benchmarks/retention.py: each method's retention after its last task (seeds together), and paired contrasts
    between methods on the seeds both have."""
    import retention
    from peft_continual.metrics import ContinualResult
    from peft_continual.retention import RetentionTrack

    def run(name, facts_after, kl_after, seed=0):
        result = ContinualResult(task_names=["a", "b"], accuracy_matrix=[[0.5, None], [0.25, 0.75]],
                                 task_metrics=["accuracy"] * 2, example_scores=[[[1.0, 0.0], None], [[0.0, 1.0], [1.0, 1.0]]])  # fmt: skip
        result.retention = {
            "general/facts": RetentionTrack("general/facts", "facts", True, [0.75, 0.5, sum(facts_after) / 4],
                                            [[1, 1, 1, 0], [1, 1, 0, 0], facts_after], "general"),  # fmt: skip
            "general/kl": RetentionTrack("general/kl", "kl", False, [0.0, 0.1, sum(kl_after) / 4],
                                         [[0.0] * 4, [0.1] * 4, kl_after], "general"),  # fmt: skip
            "general/agreement": RetentionTrack("general/agreement", "agreement", True, [1.0, 0.5, 0.5],
                                                [[1.0] * 4, [0.5] * 4, [0.5] * 4], "general"),  # fmt: skip
        }
        path = tmp_path / f"{name}_order1_seed{seed}__trainer.retention_tasks=general.json"
        data = {**json.loads(result.to_json()), "benchmark": {"method": name, "order": 1, "seed": seed}}
        path.write_text(json.dumps(data))
        return path

    paths = [run("seqlora", [0, 0, 0, 0], [0.4, 0.5, 0.6, 0.5]), run("replay", [1, 1, 0, 0], [0.2, 0.3, 0.2, 0.3]),
             run("replay", [1, 1, 1, 0], [0.2, 0.2, 0.2, 0.2], seed=1)]  # fmt: skip
    earlier = json.loads(paths[0].read_text())  # a run without retention tasks: task contrasts only
    earlier.pop("retention")
    earlier["example_scores"][1][0] = [1.0, 1.0]  # its final model kept task a
    paths.append(tmp_path / "ilora_order1_seed0.json")
    paths[-1].write_text(json.dumps({**earlier, "benchmark": {"method": "ilora", "order": 1, "seed": 0}}))
    plot = tmp_path / "plots" / "trade_off.png"
    monkeypatch.setattr(sys, "argv", ["retention.py", *map(str, paths), "--plot", str(plot)])
    retention.main()
    assert plot.read_bytes()[:4] == b"\x89PNG" and not list(plot.parent.glob(".*"))  # written whole, no staging left
    out = capsys.readouterr().out
    assert "| seqlora_order1 | 0 | 50.0 | -25.0 | 75.0 → 0.0 (-75.0 [" in out
    assert "| replay_order1 | 0,1 | 50.0 | -25.0 | 75.0 → 62.5 (-12.5 [" in out  # facts after: 50 % and 75 %
    assert "| seqlora_order1 − replay_order1 | 0 | facts | -50.0 [" in out  # seed 0 only: seqlora has no seed 1
    assert "| seqlora_order1 − replay_order1 | 0 | kl | +0.250 [+0.200, +0.350] | significant |" in out
    assert "| seqlora_order1 − replay_order1 | 0 | AA (tasks) | +0.0 [+0.0, +0.0] | not significant |" in out
    assert "| ilora_order1 (tasks only) | 0 | 50.0 | -25.0 | – | – | – |" in out  # the matrix's mean, not the scores
    assert "| seqlora_order1 − ilora_order1 (tasks only) | 0 | AA (tasks) | -25.0 [" in out
    assert not [line for line in out.splitlines() if "ilora" in line and ("facts" in line or "| kl |" in line)]


def test_retention_contrasts_against_two_runs_once_and_chosen_measures(tmp_path, capsys, monkeypatch):
    """benchmarks/retention.py --against A B contrasts A with B once (not also B with A), and --contrast_measures
    keeps only the measures named in the contrasts while the run table keeps them all."""
    import retention
    from peft_continual.metrics import ContinualResult
    from peft_continual.retention import RetentionTrack

    paths = []
    for name, facts in (("seqlora", [0, 0, 1, 0]), ("osf", [1, 0, 1, 0]), ("ssr", [1, 1, 1, 0])):
        result = ContinualResult(task_names=["a", "b"], accuracy_matrix=[[0.5, None], [0.25, 0.75]],
                                 task_metrics=["accuracy"] * 2, example_scores=[[[1.0, 0.0], None], [[0.0, 1.0], [1.0, 1.0]]])  # fmt: skip
        result.retention = {
            "general/facts": RetentionTrack("general/facts", "facts", True, [0.75, 0.75, sum(facts) / 4],
                                            [[1, 1, 1, 0], [1, 1, 1, 0], facts], "general"),  # fmt: skip
            "general/leak": RetentionTrack("general/leak", "leak", False, [0.0] * 3, [[0] * 4] * 3, "general"),
        }
        paths.append(tmp_path / f"{name}_order1_seed0__trainer.retention_tasks=general.json")
        paths[-1].write_text(json.dumps({**json.loads(result.to_json()),
                                         "benchmark": {"method": name, "order": 1, "seed": 0}}))  # fmt: skip
    argv = ["retention.py", *map(str, paths), "--against", "seqlora_order1", "osf_order1", "--contrast_measures", "facts"]
    monkeypatch.setattr(sys, "argv", argv)
    retention.main()
    out = capsys.readouterr().out
    pairs = [line.split(" | ")[0].lstrip("| ") for line in out.splitlines() if " − " in line and "| facts |" in line]
    assert pairs == ["osf_order1 − seqlora_order1", "ssr_order1 − seqlora_order1", "ssr_order1 − osf_order1"]
    assert "| leak |" not in out and "leak (base → final" in out  # the run table keeps every measure
    assert "| osf_order1 − seqlora_order1 | 0 | facts | +25.0 [" in out
