"""Task loading (every spec kind), validation, subsampling, prompts, tokenisation and collation."""

import json
import logging
from collections import Counter

import datasets
import pytest

from conftest import SHARED_DATA, synthetic_task
from peft_continual import ContinualCollator, ContinualTask, TaskSpecError, load_continual_tasks
from peft_continual.tasks import IGNORE_INDEX, PromptEncoder, left_pad, tokenize_task


def write_benchmark_folder(root, task_type="TC", name="mytopics", labels=("World", "Sports"), n=6, extra_eval=()):
    folder = root / task_type / name
    folder.mkdir(parents=True)
    rows = [{"label": labels[i % len(labels)], "sentence": f"Title: story {i}\nText: about {labels[i % len(labels)]}\n"} for i in range(n)]
    (folder / "train.json").write_text(json.dumps(rows))
    (folder / "test.json").write_text(json.dumps(rows[:4] + list(extra_eval)))
    (folder / "labels.json").write_text(json.dumps(list(labels)))
    return folder


# ------------------------------------------------------------------------------------------------ prompts


def test_prompt_has_the_reference_form():
    task = synthetic_task("colors")
    assert task.prompt("some red") == (
        "Task:TC\nDataset:colors\nWhich kind? Choose one from the option.\nOption: cold, warm \nsome red\nAnswer:"
    )


def test_long_text_is_cut_but_options_and_question_stay(tokenizer):
    task = synthetic_task("colors")
    long_text = " ".join(["red"] * 500)
    text, ids = PromptEncoder(tokenizer, 40).prompt(task, {"text": long_text})
    assert 36 <= len(ids) <= 40 and ids == tokenizer(text)["input_ids"]
    decoded = tokenizer.decode(ids)
    assert decoded.startswith("Task:TC\nDataset:colors") and "Option: cold, warm" in decoded
    assert decoded.endswith("\nAnswer:")


def test_too_small_max_length_is_a_clear_error(tokenizer):
    with pytest.raises(TaskSpecError, match="max_source_length=5 leaves no room"):
        PromptEncoder(tokenizer, 5).prompt(synthetic_task("colors"), {"text": "red"})


def test_labels_mask_the_prompt_and_cover_answer_and_eos(tokenizer):
    task = synthetic_task("colors", n_train=4)
    features = tokenize_task(tokenizer, task, 64)
    for row, label in zip(features, task.train["label"]):
        answer = tokenizer(" " + label)["input_ids"] + [tokenizer.eos_token_id]
        assert answer[-1] == tokenizer.eos_token_id
        n_prompt = len(row["input_ids"]) - len(answer)
        assert row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert row["labels"][n_prompt:] == answer == row["input_ids"][n_prompt:]


def test_collator_pads_right_and_left_pad_for_generation():
    batch = ContinualCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# ------------------------------------------------------------------------------------------------ loading


def test_benchmark_folder_spec_and_renaming(tmp_path):
    folder = write_benchmark_folder(tmp_path)
    (task,) = load_continual_tasks([str(folder)])
    assert task.name == "mytopics" and task.task_type == "TC" and task.labels == ["World", "Sports"]
    assert len(task.train) == 6 and len(task.eval) == 4 and "topic" in task.instruction
    (renamed,) = load_continual_tasks([f"news={folder}"])
    assert renamed.name == "news"


def test_known_name_resolved_under_data_dir(tmp_path):
    write_benchmark_folder(tmp_path / "CL_Benchmark", name="agnews")
    (task,) = load_continual_tasks(["agnews"], data_dir=tmp_path)
    assert task.name == "agnews" and task.task_type == "TC"


def test_known_name_without_data_dir_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("PEFT_CONTINUAL_DATA_DIR", raising=False)
    with pytest.raises(TaskSpecError, match="'yahoo' is a CL benchmark task: pass data_dir .* demo sample of agnews, amazon, dbpedia"):
        load_continual_tasks(["yahoo"])


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv"])
def test_file_specs_with_columns(tmp_path, suffix):
    rows = [{"review": f"text number {i}", "sentiment": "good" if i % 2 else "bad"} for i in range(20)]
    path = tmp_path / f"reviews.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        path.write_text("review,sentiment\n" + "\n".join(f"{r['review']},{r['sentiment']}" for r in rows))
    (task,) = load_continual_tasks([str(path)], text_column="review", label_column="sentiment", eval_fraction=0.2)
    assert task.name == "reviews" and task.labels == ["bad", "good"]
    assert len(task.eval) == 4 and Counter(task.eval["label"]) == {"bad": 2, "good": 2}
    assert not set(task.train["text"]) & set(task.eval["text"])


def test_hub_spec_uses_datasets_and_class_label_names(monkeypatch):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    split = datasets.Dataset.from_dict({"text": ["a b", "c d", "e f", "g h"], "label": [0, 1, 0, 1]}, features=features)
    calls = []

    def fake_load_dataset(repo, config=None):
        calls.append((repo, config))
        return datasets.DatasetDict({"train": split, "test": split})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (task,) = load_continual_tasks(["someone/reviews:small"])
    assert calls == [("someone/reviews", "small")]
    assert task.name == "reviews" and task.labels == ["neg", "pos"] and task.train["label"] == ["neg", "pos", "neg", "pos"]


def glue_like(test_labels, validation=True, train_labels=(0, 1) * 5):
    """A GLUE-shaped DatasetDict: ClassLabel names, and a test split whose labels may be hidden (-1)."""
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])})

    def split(prefix, labels):
        return datasets.Dataset.from_dict({"sentence": [f"{prefix} {i}" for i in range(len(labels))], "label": list(labels)}, features=features)

    splits = {"train": split("train", train_labels), "test": split("test", test_labels)}
    if validation:
        splits["validation"] = split("validation", [1, 0, 1, 0])
    return datasets.DatasetDict(splits)


def test_hidden_test_labels_evaluate_on_validation_and_say_so(monkeypatch, caplog):
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config=None: glue_like([-1] * 10))
    with caplog.at_level(logging.WARNING, logger="peft_continual"):
        (task,) = load_continual_tasks(["nyu-mll/glue:sst2"])
    assert task.eval["text"] == ["validation 0", "validation 1", "validation 2", "validation 3"]
    assert task.eval["label"] == ["positive", "negative", "positive", "negative"]
    assert any("'test' split has no labels (all 10 'label' values are negative" in r.getMessage() and "'validation'" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_no_labelled_evaluation_split_is_an_error(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config=None: glue_like([-1] * 10, validation=False))
    with pytest.raises(TaskSpecError, match=r"'glue:sst2'\): no evaluation split has labels \('test': all 10 .*hold out part of 'train'"):
        load_continual_tasks(["hub:glue:sst2"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_negative_integer_labels_are_refused_naming_split_and_count(monkeypatch, split):
    partly_hidden = [0, 1, -1, -1]
    dsd = glue_like(partly_hidden, train_labels=partly_hidden) if split == "train" else glue_like(partly_hidden)
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config=None: dsd)
    message = rf"'someone/reviews', '{split}' split\): 2 of 4 rows have an integer label outside the 2 classes 0..1 .*first row 2: -1\).*hidden label"
    with pytest.raises(TaskSpecError, match=message):
        load_continual_tasks(["someone/reviews"])


def test_label_balanced_deterministic_subsampling(tmp_path):
    folder = write_benchmark_folder(tmp_path, labels=("a", "b", "c"), n=30)
    (t1,) = load_continual_tasks([str(folder)], max_train_per_label=4, max_eval_samples=3, seed=1)
    (t2,) = load_continual_tasks([str(folder)], max_train_per_label=4, max_eval_samples=3, seed=1)
    assert Counter(t1.train["label"]) == {"a": 4, "b": 4, "c": 4}
    assert Counter(t1.eval["label"]) == {"a": 1, "b": 1, "c": 1}
    assert t1.train["text"] == t2.train["text"]
    (t3,) = load_continual_tasks([str(folder)], max_train_samples=5, seed=1)
    assert len(t3.train) == 5 and max(Counter(t3.train["label"]).values()) == 2


def test_unlabelled_eval_rows_are_dropped(tmp_path):
    folder = write_benchmark_folder(tmp_path, task_type="NLI", name="nli", labels=("yes", "no"),
                                    extra_eval=[{"label": "-", "sentence": "no gold label"}])  # fmt: skip
    (task,) = load_continual_tasks([str(folder)])
    assert "-" not in task.eval["label"] and len(task.eval) == 4


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_task_name():
    with pytest.raises(TaskSpecError, match="'dbpeida' is not a known benchmark task"):
        load_continual_tasks(["dbpeida"], data_dir="/nonexistent")


def test_missing_file():
    with pytest.raises(TaskSpecError, match="does not exist"):
        load_continual_tasks(["/no/such/file.jsonl"])


def test_missing_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "x", "gold": "y"}))
    with pytest.raises(TaskSpecError, match="label column 'label' not found"):
        load_continual_tasks([str(path)])
    with pytest.raises(TaskSpecError, match="text column 'body' not found"):
        load_continual_tasks([str(path)], text_column="body", label_column="gold")


def test_label_outside_label_set(tmp_path):
    folder = write_benchmark_folder(tmp_path, labels=("World", "Sports"))
    rows = json.loads((folder / "train.json").read_text())
    rows[3]["label"] = "Cooking"
    (folder / "train.json").write_text(json.dumps(rows))
    with pytest.raises(TaskSpecError, match="row 3 has label 'Cooking', which is not one of the options"):
        load_continual_tasks([str(folder)])


def test_empty_dataset(tmp_path):
    folder = write_benchmark_folder(tmp_path)
    (folder / "train.json").write_text("[]")
    with pytest.raises(TaskSpecError, match="train split: no examples"):
        load_continual_tasks([str(folder)])


def test_duplicate_task_names(tmp_path):
    folder = write_benchmark_folder(tmp_path)
    with pytest.raises(TaskSpecError, match="duplicate task name"):
        load_continual_tasks([str(folder), str(folder)])


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"text": "", "label": "a"}], "empty or non-string text"),
        ([{"text": "hello", "label": 1}], "non-string label 1"),
    ],
)
def test_bad_rows(rows, message):
    with pytest.raises(TaskSpecError, match=message):
        ContinualTask("t", datasets.Dataset.from_list(rows), datasets.Dataset.from_list([{"text": "x", "label": "a"}]), ["a"])


def test_non_positive_sizes_are_refused(tmp_path):
    with pytest.raises(TaskSpecError, match="max_train_per_label must be a positive number"):
        load_continual_tasks([str(write_benchmark_folder(tmp_path))], max_train_per_label=0)


@pytest.mark.parametrize("stem", ["train", "Dev"])
def test_a_split_file_read_alone_is_named_after_its_folder_and_its_split_is_said(tmp_path, caplog, stem):
    folder = tmp_path / "sst2"
    folder.mkdir()
    rows = [{"text": f"review {i}", "label": "good" if i % 2 else "bad"} for i in range(12)]
    (folder / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    with caplog.at_level(logging.WARNING, logger="peft_continual"):
        (task,) = load_continual_tasks([str(folder / f"{stem}.jsonl")])
    assert task.name == "sst2" and len(task.train) == 10 and len(task.eval) == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 of its 12 rows are held out for evaluation" in warning and "10 train" in warning
    assert f"give the folder {str(folder)!r}" in warning and "(it has test.jsonl)" in warning
    (renamed,) = load_continual_tasks([f"mine={folder / f'{stem}.jsonl'}"])
    assert renamed.name == "mine"


def test_an_error_in_a_folder_names_the_file(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}))
    (tmp_path / "test.jsonl").write_text(json.dumps({"prompt": "c", "completion": " "}))
    with pytest.raises(TaskSpecError, match=r"test.jsonl\) line 1: empty completion"):
        load_continual_tasks([str(tmp_path)])


def test_malformed_json_file_names_the_spec(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(TaskSpecError, match="broken.json"):
        load_continual_tasks([str(path)])


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="CL benchmark data (../shared/data/cl_benchmark) not present")
def test_real_cl_benchmark_tasks():
    tasks = load_continual_tasks(["dbpedia", "amazon", "COPA", "MNLI"], data_dir=SHARED_DATA, max_train_per_label=2, max_eval_samples=20)
    dbpedia, amazon, copa, mnli = tasks
    assert len(dbpedia.labels) == 14 and len(dbpedia.train) == 28 and len(dbpedia.eval) == 20
    assert amazon.task_type == "SC" and "sentiment" in amazon.instruction
    assert copa.instruction == "" and not copa.show_options and copa.prompt("Q?").endswith("Q?\nAnswer:")
    assert "-" not in mnli.eval["label"]
