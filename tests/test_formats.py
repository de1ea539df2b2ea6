"""Every data format loads into one shape; bad rows and the data-hygiene traps fail clearly, naming file and line."""

import json
import logging

import datasets
import pytest

from conftest import SHARED_DATA
from peft_continual import GENERATION_ORDER, ContinualTask, TaskSpecError, load_continual_tasks


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


def conversational_rows(n=5):
    """TRL's conversational prompt/completion rows; odd rows carry a system message and an earlier exchange."""
    rows = []
    for i in range(n):
        earlier = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hello"}] if i % 2 else []  # fmt: skip
        rows.append({"prompt": earlier + [{"role": "user", "content": f"capital {i}?"}],
                     "completion": [{"role": "assistant", "content": f"city {i}"}]})  # fmt: skip
    return rows


def test_conversational_prompt_completion_rows(tmp_path):
    rows = conversational_rows()
    (task,) = load_continual_tasks([jsonl(tmp_path / "chat.jsonl", rows)], eval_fraction=0.4)
    for row in list(task.train) + list(task.eval):
        i = int(row["prompt"].removeprefix("capital ").rstrip("?"))
        assert row["completion"] == f"city {i}"
        assert (json.loads(row["context"]) if row["context"] else []) == rows[i]["prompt"][:-1]


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": ["capital?"], "completion": [{"role": "assistant", "content": "Paris"}]},
         r"line 1: 'prompt' \+ 'completion' \(a list-valued prompt: TRL's conversational prompt/completion format\): 'prompt' must be a list of \{'role', 'content'\} messages; got \['capital\?'\]"),
        ({"prompt": [{"role": "user", "content": "capital?"}], "completion": [{"role": "user", "content": "Paris"}]},
         r"line 1: .*conversational prompt/completion format\): 'completion' must be a list holding the one assistant message"),
        ({"prompt": [{"role": "system", "content": "Be brief."}], "completion": [{"role": "assistant", "content": "Paris"}]},
         r"line 1: .*conversational prompt/completion format\): the target assistant turn must follow a user turn"),
    ],
    ids=["prompt-of-strings", "completion-not-assistant", "no-user-turn"],
)  # fmt: skip
def test_unreadable_conversational_rows_name_the_format(tmp_path, row, message):
    with pytest.raises(TaskSpecError, match=message):
        load_continual_tasks([jsonl(tmp_path / "chat.jsonl", [row])])


# ------------------------------------------------------------------------------------------------ in-memory datasets


CHATS = datasets.Dataset.from_dict(
    {"messages": [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(10)]}
)


def test_in_memory_messages_dataset_is_a_task(caplog):
    with caplog.at_level(logging.INFO, logger="peft_continual"):
        task = ContinualTask.from_dataset("chats", CHATS)
    assert task.kind == "generation" and len(task.train) == 8 and len(task.eval) == 2
    assert all(r["completion"] == "a" + r["prompt"].removeprefix("q") for r in list(task.train) + list(task.eval))
    assert any("2 of its 10 rows are held out for evaluation" in r.getMessage() for r in caplog.records)
    (listed,) = load_continual_tasks([CHATS])
    assert listed.name == "task1" and listed.train["prompt"] == task.train["prompt"]


def test_in_memory_conversational_prompt_completion_and_dataset_dict():
    rows = conversational_rows(6)
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4]), "validation": datasets.Dataset.from_list(rows[4:])})
    task = ContinualTask.from_dataset("capitals", dsd)
    assert task.train["completion"] == ["city 0", "city 1", "city 2", "city 3"] and task.eval["prompt"] == ["capital 4?", "capital 5?"]
    assert json.loads(task.train[1]["context"]) == rows[1]["prompt"][:-1] and task.eval[0]["context"] == ""


def test_in_memory_classification_dataset_dict_with_class_labels():
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(6)], "label": [0, 1] * 3}, features=features)
    test = datasets.Dataset.from_dict({"sentence": ["t0", "t1"], "label": [1, 0]}, features=features)
    task = ContinualTask.from_dataset("sst", datasets.DatasetDict(train=train, test=test), instruction="Sentiment? ")
    assert task.labels == ["neg", "pos"] and task.eval["label"] == ["pos", "neg"] and task.instruction == "Sentiment? "


def test_datasets_are_named_by_pair_dict_hub_name_or_position():
    hub = datasets.Dataset.from_dict(CHATS.to_dict(), info=datasets.DatasetInfo(dataset_name="ultrachat", builder_name="parquet"))
    local = datasets.Dataset.from_dict(CHATS.to_dict(), info=datasets.DatasetInfo(dataset_name="json", builder_name="json"))
    tasks = load_continual_tasks([hub, ("mine", CHATS), local, "arithmetic"], max_train_samples=2)
    assert [t.name for t in tasks] == ["ultrachat", "mine", "task3", "arithmetic"]
    assert [t.name for t in load_continual_tasks({"a": CHATS, "b": CHATS})] == ["a", "b"]
    assert [t.name for t in load_continual_tasks(datasets.DatasetDict(train=CHATS))] == ["task1"]


@pytest.mark.parametrize(
    "specs,message",
    [
        ({"train": CHATS, "test": CHATS}, r"split names \['train', 'test'\] as task names: for the splits of one task pass datasets.DatasetDict"),
        ([CHATS.to_iterable_dataset()], r"task spec 1 is a IterableDataset \(streamed.*without streaming=True"),
        (["arithmetic", 3], r"task spec 2 is a int: expected a string spec, a datasets.Dataset or DatasetDict"),
        ([datasets.DatasetDict(validation=CHATS)], r"no 'train' split \(found \['validation'\]\)"),
    ],
    ids=["dict-of-splits", "streamed", "not-a-spec", "no-train-split"],
)  # fmt: skip
def test_bad_in_memory_specs(specs, message):
    with pytest.raises(TaskSpecError, match=message):
        load_continual_tasks(specs)


def test_building_a_task_from_other_formats_points_to_from_dataset():
    with pytest.raises(TaskSpecError, match=r"missing column\(s\) \['completion', 'context', 'prompt'\]; found \['messages'\]; these rows are in the messages format; ContinualTask.from_dataset"):
        ContinualTask("chats", CHATS, CHATS, kind="generation")
    convo = datasets.Dataset.from_list(conversational_rows(2))
    with pytest.raises(TaskSpecError, match=r"row 0 has an empty or non-string prompt .*TRL's conversational format\), read by ContinualTask.from_dataset"):
        ContinualTask("capitals", convo, convo, kind="generation")


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
