"""Tasks of a continual sequence: loading, validation, subsampling, prompts and tokenisation.

A task is a classification problem phrased as text generation: the prompt lists the label options and ends
with ``Answer:``; the target is the label text followed by EOS. Task specs (see :func:`load_continual_tasks`):

* a known CL benchmark name (``dbpedia``, ``amazon``, ...) resolved under ``data_dir``; with no ``data_dir`` (nor
  ``$PEFT_CONTINUAL_DATA_DIR``), ``dbpedia``, ``amazon`` and ``agnews`` come from the small sample shipped in the
  package (:func:`packaged_demo_dir`);
* a folder in the CL_Benchmark layout (``train.json``, ``test.json``/``dev.json``, ``labels.json``);
* a ``.json`` / ``.jsonl`` / ``.csv`` file with a text and a label column (eval = a held-out stratified split);
* a Hub dataset, ``owner/name[:config]`` or ``hub:name[:config]``.

Any spec may be prefixed with ``NAME=`` to rename the task.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import datasets
import torch

# Benchmark dataset -> task type (the CL_Benchmark folder that holds it). Names as in the O-LoRA/N-LoRA data.
BENCHMARK_TASKS = {
    "agnews": "TC", "dbpedia": "TC", "yahoo": "TC",
    "amazon": "SC", "yelp": "SC", "IMDB": "SC", "SST-2": "SC",
    "MNLI": "NLI", "CB": "NLI", "RTE": "NLI",
    "QQP": "QQP", "BoolQA": "BoolQA", "COPA": "COPA", "MultiRC": "MultiRC", "WiC": "WiC",
}  # fmt: skip

# Zero-shot instruction per task type, as in the benchmark's instruction_config.json (COPA has none).
BENCHMARK_INSTRUCTIONS = {
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? Choose one from the option.\n',
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? Choose one from the option.\n',
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.\n",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? Choose one from the option.\n",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? Choose one from the option.\n",
}  # fmt: skip

STANDARD_ORDERS = {
    1: ["dbpedia", "amazon", "yahoo", "agnews"],
    2: ["dbpedia", "amazon", "agnews", "yahoo"],
    3: ["yahoo", "amazon", "agnews", "dbpedia"],
    4: "MNLI CB WiC COPA QQP BoolQA RTE IMDB yelp amazon SST-2 dbpedia agnews MultiRC yahoo".split(),
    5: "MultiRC BoolQA WiC MNLI CB COPA QQP RTE IMDB SST-2 dbpedia agnews yelp amazon yahoo".split(),
    6: "yelp amazon MNLI CB COPA QQP RTE IMDB SST-2 dbpedia agnews yahoo MultiRC BoolQA WiC".split(),
}

NO_GOLD_LABEL = "-"  # GLUE's marker for "annotators disagreed" (131 MNLI test rows): never scorable.
DATA_DIR_ENV = "PEFT_CONTINUAL_DATA_DIR"
IGNORE_INDEX = -100

logger = logging.getLogger(__name__)


class TaskSpecError(ValueError):
    """A task spec or its data is unusable; raised before any training starts."""


@dataclass
class ContinualTask:
    """One task of a sequence: rows with a ``text`` and a ``label`` column, and the label options."""

    name: str
    train: Optional[datasets.Dataset]  # None for a task restored from a saved run (trained already)
    eval: datasets.Dataset
    labels: list[str]
    instruction: str = ""
    task_type: Optional[str] = None
    show_options: bool = True
    source: str = field(default="", repr=False)

    def __post_init__(self):
        where = f"task {self.name!r}" + (f" ({self.source})" if self.source and self.source != self.name else "")
        if not self.name or not isinstance(self.name, str):
            raise TaskSpecError(f"{where}: a task needs a non-empty name")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise TaskSpecError(f"{where}: labels must be a non-empty list of distinct strings, got {self.labels!r}")
        if not all(isinstance(l, str) and l.strip() for l in self.labels):
            raise TaskSpecError(f"{where}: every label option must be a non-empty string, got {self.labels!r}")
        for split_name in ("train", "eval"):
            split = getattr(self, split_name)
            if split is None and split_name == "train":
                continue
            if isinstance(split, (list, tuple)):
                split = datasets.Dataset.from_list(list(split)) if split else datasets.Dataset.from_dict({"text": [], "label": []})
                setattr(self, split_name, split)
            _validate_rows(split, self.labels, f"{where}, {split_name} split")

    def prompt_parts(self, text: str) -> tuple[str, str, str]:
        """(head, text, tail): only the text may be shortened, never the options or the question."""
        head = f"Task:{self.task_type}\n" if self.task_type else ""
        head += f"Dataset:{self.name}\n" + self.instruction
        if self.show_options:
            head += "Option: " + ", ".join(self.labels) + " \n"
        return head, text, "\nAnswer:"

    def prompt(self, text: str) -> str:
        return "".join(self.prompt_parts(text))


def _validate_rows(split: datasets.Dataset, labels: Sequence[str], where: str) -> None:
    missing = {"text", "label"} - set(split.column_names)
    if missing:
        raise TaskSpecError(f"{where}: missing column(s) {sorted(missing)}; found {split.column_names}")
    if len(split) == 0:
        raise TaskSpecError(f"{where}: no examples (empty dataset)")
    allowed = set(labels)
    for i, (text, label) in enumerate(zip(split["text"], split["label"])):
        if not isinstance(text, str) or not text.strip():
            raise TaskSpecError(f"{where}: row {i} has an empty or non-string text ({text!r})")
        if not isinstance(label, str):
            raise TaskSpecError(
                f"{where}: row {i} has a non-string label {label!r}; labels are generated as text, so map them to "
                "words first (e.g. 0 -> 'negative')"
            )
        if label not in allowed:
            raise TaskSpecError(f"{where}: row {i} has label {label!r}, which is not one of the options {list(labels)}")


# ----------------------------------------------------------------------------------------------- loading


def load_continual_tasks(
    specs: Sequence[str] | str,
    data_dir: Optional[str | os.PathLike] = None,
    *,
    text_column: Optional[str] = None,
    label_column: str = "label",
    instruction: str = "Choose one from the option.\n",
    max_train_samples: Optional[int] = None,
    max_train_per_label: Optional[int] = None,
    max_eval_samples: Optional[int] = None,
    eval_split: str = "test",
    eval_fraction: float = 0.2,
    seed: int = 42,
) -> list[ContinualTask]:
    """Resolve task specs (see the module docstring) into validated, deterministically subsampled tasks.

    Every spec is checked before anything is returned, so a bad one fails before any training starts.
    Subsampling is label-balanced: ``max_train_per_label`` first, then ``max_train_samples`` and
    ``max_eval_samples`` take labels in turn.
    """
    if isinstance(specs, str):
        specs = [s for s in re.split(r"[,\s]+", specs) if s]
    if not specs:
        raise TaskSpecError("no task specs given: pass e.g. ['dbpedia', 'amazon'] or paths to data files")
    for name, value in (("max_train_samples", max_train_samples), ("max_train_per_label", max_train_per_label),
                        ("max_eval_samples", max_eval_samples)):  # fmt: skip
        if value is not None and value <= 0:
            raise TaskSpecError(f"{name} must be a positive number, got {value}")
    if not 0 < eval_fraction < 1:
        raise TaskSpecError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    options = dict(text_column=text_column, label_column=label_column, instruction=instruction,
                   eval_split=eval_split, eval_fraction=eval_fraction, seed=seed)  # fmt: skip

    tasks = []
    for spec in specs:
        task = _load_one(spec, data_dir, **options)
        task.train = _balanced_subset(task.train, max_train_per_label, max_train_samples, seed)
        task.eval = _balanced_subset(task.eval, None, max_eval_samples, seed)
        tasks.append(task)
    check_unique_names(tasks)
    return tasks


def check_unique_names(tasks: Sequence[ContinualTask]) -> None:
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TaskSpecError(f"duplicate task name(s) {duplicates}: rename with NAME=SPEC, e.g. 'agnews2=agnews'")


def _load_one(spec: str, data_dir, **options) -> ContinualTask:
    name, _, source = spec.partition("=") if "=" in spec else (None, "", spec)
    source = source.strip()
    path = Path(source).expanduser()
    known = {k.lower(): k for k in BENCHMARK_TASKS}
    try:
        if path.suffix.lower() in (".json", ".jsonl", ".csv"):
            if not path.is_file():
                raise TaskSpecError(f"task spec {spec!r}: file {str(path)!r} does not exist")
            return _load_file(path, name or path.stem, **options)
        if path.is_dir():
            return _load_benchmark_folder(path, name or path.name, spec)
        if source.lower() in known:
            return _load_benchmark_folder(_find_benchmark_folder(known[source.lower()], data_dir, spec), name or known[source.lower()], spec)
        hub = source[4:] if source.startswith("hub:") else source
        if source.startswith("hub:") or re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", source):
            return _load_hub(hub, name or hub.split("/")[-1].split(":")[0], **options)
    except TaskSpecError:
        raise
    except Exception as exc:  # a data file that datasets/json cannot parse, a Hub error, ...
        raise TaskSpecError(f"task spec {spec!r}: could not load it: {exc}") from exc
    raise TaskSpecError(
        f"task spec {spec!r} is not a known benchmark task ({', '.join(sorted(BENCHMARK_TASKS))}), nor an existing "
        "file or folder; for a Hub dataset write 'owner/name[:config]' or 'hub:name[:config]'"
    )


def packaged_demo_dir() -> Path:
    """A label-balanced sample of dbpedia, amazon and agnews shipped in the package (CL_Benchmark layout, see SOURCE.md)."""
    return Path(str(importlib.resources.files("peft_continual") / "data" / "demo"))


def _find_benchmark_folder(name: str, data_dir, spec: str) -> Path:
    if data_dir is None:
        demo = packaged_demo_dir()
        if not (demo / BENCHMARK_TASKS[name] / name / "train.json").is_file():
            sampled = ", ".join(sorted(p.parent.name for p in demo.glob("*/*/train.json")))
            raise TaskSpecError(
                f"task spec {spec!r} is a CL benchmark task: pass data_dir (the folder holding CL_Benchmark/) or set "
                f"${DATA_DIR_ENV} (without them only the packaged demo sample of {sampled} is available)"
            )
        logger.warning(
            f"task {name!r}: no data_dir given (nor ${DATA_DIR_ENV}), using the small sample packaged for the demo "
            f"({demo}); pass data_dir for the full CL benchmark"
        )
        data_dir = demo
    root = Path(data_dir).expanduser()
    task_type = BENCHMARK_TASKS[name]
    for candidate in (root / "CL_Benchmark" / task_type / name, root / task_type / name, root / name):
        if (candidate / "train.json").is_file():
            return candidate
    raise TaskSpecError(f"task spec {spec!r}: no {task_type}/{name}/train.json under data_dir {str(root)!r}")


def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TaskSpecError(f"{str(path)!r}: expected a JSON array of objects")
    return rows


def _load_benchmark_folder(folder: Path, name: str, spec: str) -> ContinualTask:
    """A CL_Benchmark-layout folder; the parent folder's name is the task type (TC, SC, NLI, ...)."""
    labels_file, train_file = folder / "labels.json", folder / "train.json"
    for needed in (labels_file, train_file):
        if not needed.is_file():
            raise TaskSpecError(f"task spec {spec!r}: {str(needed)!r} is missing (CL_Benchmark layout expected)")
    eval_file = next((folder / f for f in ("test.json", "dev.json") if (folder / f).is_file()), None)
    if eval_file is None:
        raise TaskSpecError(f"task spec {spec!r}: neither test.json nor dev.json in {str(folder)!r}")
    labels = json.loads(labels_file.read_text(encoding="utf-8"))
    task_type = folder.parent.name if folder.parent.name in BENCHMARK_INSTRUCTIONS or folder.parent.name == "COPA" else None

    def split(path: Path, drop_no_gold: bool) -> datasets.Dataset:
        rows = _read_json_rows(path)
        missing = [i for i, r in enumerate(rows) if "sentence" not in r or "label" not in r]
        if missing:
            raise TaskSpecError(f"task spec {spec!r}: row {missing[0]} of {str(path)!r} lacks 'sentence' or 'label'")
        if drop_no_gold:
            rows = [r for r in rows if r["label"] != NO_GOLD_LABEL]
        return datasets.Dataset.from_dict({"text": [r["sentence"] for r in rows], "label": [r["label"] for r in rows]})

    has_instruction = task_type in BENCHMARK_INSTRUCTIONS
    return ContinualTask(
        name=name,
        train=split(train_file, drop_no_gold=False),
        eval=split(eval_file, drop_no_gold=True),
        labels=labels,
        instruction=BENCHMARK_INSTRUCTIONS.get(task_type, ""),
        task_type=task_type,
        show_options=has_instruction,
        source=str(folder),
    )


def _pick_text_column(columns: Sequence[str], text_column: Optional[str], where: str) -> str:
    if text_column is not None:
        if text_column not in columns:
            raise TaskSpecError(f"{where}: text column {text_column!r} not found; columns are {list(columns)}")
        return text_column
    for candidate in ("sentence", "text", "content", "input"):
        if candidate in columns:
            return candidate
    raise TaskSpecError(f"{where}: no text column found among {list(columns)}; pass text_column=...")


def _to_task_rows(ds: datasets.Dataset, text_column, label_column, where: str) -> tuple[datasets.Dataset, list[str]]:
    """Rename to text/label, turn ClassLabel ids into names; returns the rows and the label names if known."""
    text = _pick_text_column(ds.column_names, text_column, where)
    if label_column not in ds.column_names:
        raise TaskSpecError(f"{where}: label column {label_column!r} not found; columns are {ds.column_names}")
    feature = ds.features[label_column]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    texts = ds[text]
    labels = [names[i] for i in ds[label_column]] if names else ds[label_column]
    return datasets.Dataset.from_dict({"text": texts, "label": labels}), names


def _load_file(path: Path, name: str, *, text_column, label_column, instruction, eval_fraction, seed, **_) -> ContinualTask:
    where = f"task {name!r} ({path})"
    builder = "csv" if path.suffix.lower() == ".csv" else "json"
    ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    rows, names = _to_task_rows(ds, text_column, label_column, where)
    if len(rows) == 0:
        raise TaskSpecError(f"{where}: no examples (empty file)")
    labels = names or sorted({l for l in rows["label"] if isinstance(l, str)})
    train, evaluation = _stratified_split(rows, eval_fraction, seed)
    return ContinualTask(name, train, evaluation, labels, instruction=instruction, source=str(path))


def _load_hub(hub_id: str, name: str, *, text_column, label_column, instruction, eval_split, eval_fraction, seed) -> ContinualTask:
    repo, _, config = hub_id.partition(":")
    where = f"task {name!r} (Hub dataset {hub_id!r})"
    dsd = datasets.load_dataset(repo, config or None)
    if "train" not in dsd:
        raise TaskSpecError(f"{where}: no 'train' split (found {list(dsd)})")
    train, names = _to_task_rows(dsd["train"], text_column, label_column, where)
    eval_name = next((s for s in (eval_split, "validation", "test") if s in dsd), None)
    if eval_name is None:
        train, evaluation = _stratified_split(train, eval_fraction, seed)
    else:
        evaluation, _ = _to_task_rows(dsd[eval_name], text_column, label_column, where)
    labels = names or sorted({l for l in train["label"] if isinstance(l, str)})
    return ContinualTask(name, train, evaluation, labels, instruction=instruction, source=f"hub:{hub_id}")


def _label_groups(ds: datasets.Dataset, seed: int) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(ds["label"]):
        groups.setdefault(label, []).append(i)
    rng = random.Random(seed)
    for indices in groups.values():
        rng.shuffle(indices)
    return groups


def _round_robin(groups: dict[Any, list[int]], total: Optional[int]) -> list[int]:
    order, depth = [], 0
    longest = max((len(g) for g in groups.values()), default=0)
    while depth < longest and (total is None or len(order) < total):
        for label in sorted(groups, key=str):
            if depth < len(groups[label]) and (total is None or len(order) < total):
                order.append(groups[label][depth])
        depth += 1
    return order


def _balanced_subset(ds: datasets.Dataset, per_label: Optional[int], total: Optional[int], seed: int) -> datasets.Dataset:
    if per_label is None and (total is None or total >= len(ds)):
        return ds
    groups = _label_groups(ds, seed)
    if per_label is not None:
        groups = {label: indices[:per_label] for label, indices in groups.items()}
    return ds.select(sorted(_round_robin(groups, total)))


def _stratified_split(ds: datasets.Dataset, eval_fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    train_idx, eval_idx = [], []
    for indices in _label_groups(ds, seed).values():
        n_eval = int(round(len(indices) * eval_fraction)) if len(indices) > 1 else 0
        eval_idx += indices[:n_eval]
        train_idx += indices[n_eval:]
    return ds.select(sorted(train_idx)), ds.select(sorted(eval_idx))


# ------------------------------------------------------------------------------------------ tokenisation


def _special_prefix(tokenizer) -> list[int]:
    """What the tokenizer puts before a text (e.g. BOS for Llama, nothing for GPT-2)."""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return [i for i in ids if i != tokenizer.eos_token_id]


def encode_prompt(tokenizer, task: ContinualTask, text: str, max_source_length: int) -> list[int]:
    """Token ids of the prompt; an over-long text is cut, never the instruction, options or ``Answer:``."""
    head, body, tail = (tokenizer(part, add_special_tokens=False)["input_ids"] for part in task.prompt_parts(text))
    fixed = len(_special_prefix(tokenizer)) + len(head) + len(tail)
    if fixed >= max_source_length:
        raise TaskSpecError(
            f"task {task.name!r}: max_source_length={max_source_length} leaves no room for the text: instruction, "
            f"options and question alone take {fixed} tokens; raise max_source_length"
        )
    return _special_prefix(tokenizer) + head + body[: max_source_length - fixed] + tail


def encode_answer(tokenizer, label: str) -> list[int]:
    """Token ids of the target: the label after a space, then EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: set tokenizer.eos_token before training")
    return tokenizer(" " + label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_task(tokenizer, task: ContinualTask, max_source_length: int) -> datasets.Dataset:
    """Training features: ``input_ids``, ``attention_mask`` and ``labels`` (-100 on every prompt token)."""
    if task.train is None:
        raise TaskSpecError(f"task {task.name!r} has no training data (it was restored from a saved run)")
    answers = {label: encode_answer(tokenizer, label) for label in task.labels}
    input_ids, labels = [], []
    for text, label in zip(task.train["text"], task.train["label"]):
        prompt = encode_prompt(tokenizer, task, text, max_source_length)
        input_ids.append(prompt + answers[label])
        labels.append([IGNORE_INDEX] * len(prompt) + answers[label])
    return datasets.Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": [[1] * len(x) for x in input_ids], "labels": labels}
    )


@dataclass
class ContinualCollator:
    """Pads ``input_ids``/``attention_mask``/``labels`` on the right (training, replay)."""

    pad_token_id: int
    pad_to_multiple_of: Optional[int] = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def pad(key, value):
            return torch.tensor([list(f[key]) + [value] * (length - len(f[key])) for f in features], dtype=torch.long)

        batch = {"input_ids": pad("input_ids", self.pad_token_id), "labels": pad("labels", IGNORE_INDEX)}
        batch["attention_mask"] = torch.tensor(
            [[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features], dtype=torch.long
        )
        return batch


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask (prompts for generation and scoring)."""
    length = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_token_id] * (length - len(s)) + list(s) for s in sequences], dtype=torch.long)
    mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long)
    return ids, mask
