"""Every data format loads into one shape; bad rows and the data-hygiene traps fail clearly, naming file and line."""

import json

import datasets
import pytest

from conftest import SHARED_DATA
from peft_continual import GENERATION_ORDER, TaskSpecError, load_continual_tasks


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PAIRS = [(f"question {i}", f"answer {i}") for i in range(10)]


def test_standard_prompt_completion(tmp_path):
    (task,) = load_continual_tasks([jsonl(tmp_path / "qa.jsonl", [{"prompt": p, "completion": c} for p, c in PAIRS])])
    assert task.kind == "generation" and task.metric == "exact_match" and task.labels == []
    assert len(task.train) == 8 and len(task.eval) == 2
    assert sorted(list(task.train["prompt"]) + list(task.eval["prompt"])) == sorted(p for p, _ in PAIRS)
    row = task.train[0]
    assert row["completion"] == dict(PAIRS)[row["prompt"]] and row["context"] == ""


def test_conversational_messages_keep_earlier_turns_as_context(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hi {i}"},
                          {"role": "assistant", "content": "hello"}, {"role": "user", "content": f"capital {i}?"},
                          {"role": "assistant", "content": f"city {i}"}]} for i in range(5)]  # fmt: skip
    (task,) = load_continual_tasks([jsonl(tmp_path / "chat.jsonl", rows)], eval_fraction=0.4)
    row = task.train[0]
    i = row["prompt"].split()[-1].rstrip("?")
    assert row["prompt"] == f"capital {i}?" and row["completion"] == f"city {i}"
    assert json.loads(row["context"]) == rows[int(i)]["messages"][:3]


def test_alpaca_and_trace_folder(tmp_path):
    alpaca = [{"instruction": f"Translate {i}", "input": "" if i % 2 else f"word{i}", "output": f"mot{i}"} for i in range(6)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(alpaca))
    (task,) = load_continual_tasks([str(path)], eval_fraction=0.5)
    prompts = dict(zip(list(task.train["prompt"]) + list(task.eval["prompt"]), list(task.train["completion"]) + list(task.eval["completion"])))
    assert prompts["Translate 0\nword0"] == "mot0" and prompts["Translate 1"] == "mot1"

    folder = tmp_path / "ScienceQA"  # TRACE layout: train/eval/test arrays of prompt/answer
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps([{"prompt": p, "answer": a} for p, a in PAIRS[:6]]))
    (folder / "test.json").write_text(json.dumps([{"prompt": p, "answer": a} for p, a in PAIRS[6:]]))
    (trace,) = load_continual_tasks([f"sqa={folder}"], metrics={"sqa": "f1"})
    assert trace.name == "sqa" and trace.metric == "f1" and trace.eval["completion"] == [a for _, a in PAIRS[6:]]


def test_csv_generation_and_renamed_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question,reply\n" + "".join(f'"{p}, please","{c}"\n' for p, c in PAIRS))
    (task,) = load_continual_tasks([str(path)], prompt_column="question", completion_column="reply", max_train_samples=3)
    assert task.kind == "generation" and len(task.train) == 3 and task.train[0]["prompt"].endswith(", please")
    (again,) = load_continual_tasks([str(path)], prompt_column="question", completion_column="reply", max_train_samples=3)
    assert again.train["prompt"] == task.train["prompt"]  # deterministic subsample


def test_hub_conversational_dataset(monkeypatch):
    messages = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(4)]
    split = datasets.Dataset.from_dict({"messages": messages})
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config=None: datasets.DatasetDict({"train": split, "test": split}))
    (task,) = load_continual_tasks(["someone/chats"])
    assert task.kind == "generation" and task.train["prompt"] == ["q0", "q1", "q2", "q3"]


# ------------------------------------------------------------------------------------------------ bad rows


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"prompt": "a", "completion": "x"}, {"prompt": "b"}], r"qa.jsonl\) line 2: no completion"),
        ([{"prompt": "a", "completion": "x"}, {"prompt": "b", "completion": "  "}], r"line 2: empty completion"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], r"line 1: 'messages' has no assistant turn"),
        ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                        {"role": "user", "content": "and?"}]}], r"line 1: the assistant turn is not last"),  # fmt: skip
    ],
    ids=["no-completion", "empty-completion", "no-assistant", "assistant-not-last"],
)
def test_bad_generation_rows_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(TaskSpecError, match=message):
        load_continual_tasks([jsonl(tmp_path / "qa.jsonl", rows)])


def test_unknown_metric_and_metric_for_an_unknown_task(tmp_path):
    path = jsonl(tmp_path / "qa.jsonl", [{"prompt": p, "completion": c} for p, c in PAIRS])
    with pytest.raises(TaskSpecError, match="unknown metric 'bleu'"):
        load_continual_tasks([path], metrics={"qa": "bleu"})
    with pytest.raises(TaskSpecError, match="metric given for task 'qq'"):
        load_continual_tasks([path], metrics={"qq": "f1"})


# ------------------------------------------------------------------------------------------------ data hygiene


def reviews_csv(tmp_path, labels, name="reviews.csv", delimiter=","):
    path = tmp_path / name
    path.write_text(f"text{delimiter}label\n" + "".join(f"review {i}{delimiter}{l}\n" for i, l in enumerate(labels)))
    return str(path)


def test_labels_differing_by_surrounding_spaces_are_one_label(tmp_path):
    (task,) = load_continual_tasks([reviews_csv(tmp_path, ["positive ", "positive", " negative", "negative"] * 3)])
    assert task.labels == ["negative", "positive"] and set(task.train["label"]) <= {"negative", "positive"}


def test_labels_differing_only_by_case_are_refused(tmp_path):
    with pytest.raises(TaskSpecError, match=r"label options \['Positive', 'positive'\] differ only by case"):
        load_continual_tasks([reviews_csv(tmp_path, ["Positive", "positive", "negative"] * 3)])


def test_csv_row_with_an_unquoted_comma_is_refused_by_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\ngood stuff,positive\nbad, really bad,negative\n")
    with pytest.raises(TaskSpecError, match=r"line 3: 3 fields, the header has 2 .* must be quoted"):
        load_continual_tasks([str(path)])


def test_semicolon_delimited_csv_loads(tmp_path):
    (task,) = load_continual_tasks([reviews_csv(tmp_path, ["good", "bad"] * 5, delimiter=";")])
    assert task.labels == ["bad", "good"] and task.train[0]["text"].startswith("review ")


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncafé au lait,drink\n".encode("latin-1"))
    with pytest.raises(TaskSpecError, match=r"latin1.csv' line 2: not valid UTF-8"):
        load_continual_tasks([str(path)])


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(TaskSpecError, match=r"broken.jsonl' line 2: malformed JSON"):
        load_continual_tasks([str(path)])


def test_numeric_labels_say_map_them_to_words(tmp_path):
    path = jsonl(tmp_path / "num.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(6)])
    with pytest.raises(TaskSpecError, match=r"line 1: label 0 is not a string.*map them to words"):
        load_continual_tasks([path])


def test_free_form_answers_loaded_as_classification_point_to_generation(tmp_path):
    path = jsonl(tmp_path / "chat.jsonl", [{"prompt": f"tell me {i}", "response": f"story number {i}"} for i in range(20)])
    with pytest.raises(TaskSpecError, match="look like free-form answers.*kind='generation'"):
        load_continual_tasks([path], text_column="prompt", label_column="response")
    (task,) = load_continual_tasks([path], kind="generation", completion_column="response")
    assert task.kind == "generation" and task.train[0]["completion"].startswith("story number")


def test_label_with_a_single_example_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"label\(s\) \['rare'\] have a single example.*never evaluated"):
        load_continual_tasks([reviews_csv(tmp_path, ["good", "bad"] * 5 + ["rare"])])


def test_path_typo_without_extension_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    jsonl(tmp_path / "data" / "mytrain.jsonl", [{"prompt": "a", "completion": "b"}])
    monkeypatch.chdir(tmp_path)

    def not_on_hub(repo, config=None):
        raise FileNotFoundError(f"Dataset '{repo}' doesn't exist on the Hub or cannot be accessed")

    monkeypatch.setattr(datasets, "load_dataset", not_on_hub)
    with pytest.raises(TaskSpecError, match="no such file or folder, and not a Hub dataset .a local folder of that name"):
        load_continual_tasks(["data/mytrain"])


# ------------------------------------------------------------------------------------------------ offline sequence


def test_arithmetic_task_is_generated_deterministically_and_correct():
    (task,) = load_continual_tasks(["arithmetic"], max_train_samples=50, max_eval_samples=20)
    assert task.kind == "generation" and task.metric == "exact_match"
    for row in list(task.train) + list(task.eval):
        a, op, b = row["prompt"].removeprefix("What is ").rstrip("?").split()
        assert int(row["completion"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert not set(task.train["prompt"]) & set(task.eval["prompt"])
    (again,) = load_continual_tasks(["arithmetic"], max_train_samples=50, max_eval_samples=20)
    assert list(again.train["prompt"]) == list(task.train["prompt"])


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="CL benchmark data (../shared/data/cl_benchmark) not present")
def test_offline_generation_sequence_from_the_benchmark_files():
    titles, arithmetic, spelling = load_continual_tasks(GENERATION_ORDER, data_dir=SHARED_DATA, max_train_samples=30, max_eval_samples=10)
    assert [t.metric for t in (titles, arithmetic, spelling)] == ["rouge_l", "exact_match", "edit_similarity"]
    assert all(len(t.train) == 30 and len(t.eval) == 10 for t in (titles, arithmetic, spelling))
    assert not any("Title:" in p for p in titles.train["prompt"]) and all(len(c.split()) <= 12 for c in titles.train["completion"])
    for row in spelling.train:
        noisy, clean = row["prompt"].split(), row["completion"].split()
        assert len(noisy) == len(clean) and noisy != clean
        assert all(sorted(n) == sorted(c) and n[0] == c[0] and n[-1] == c[-1] for n, c in zip(noisy, clean))
