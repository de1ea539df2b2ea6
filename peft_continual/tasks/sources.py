"""Task specs resolved into validated, deterministically subsampled tasks.

Specs (see :func:`load_continual_tasks`), each optionally prefixed with ``NAME=`` to rename the task:

* a known CL benchmark name (``dbpedia``, ``amazon``, ...) resolved under ``data_dir``; with no ``data_dir`` (nor
  ``$PEFT_CONTINUAL_DATA_DIR``), ``dbpedia``, ``amazon`` and ``agnews`` come from the small sample shipped in the
  package (:func:`packaged_demo_dir`);
* a task of the offline generation sequence (``amazon-title``, ``arithmetic``, ``spelling``; see ``derived``);
* a folder in the CL_Benchmark layout (``train.json``, ``test.json``/``dev.json``, ``labels.json``), or a folder
  with ``train`` and ``test``/``eval``/``dev``/``validation`` files (``.json``/``.jsonl``/``.csv``);
* a ``.json`` / ``.jsonl`` / ``.csv`` file (eval = a held-out split); a file named after a split
  (``train.jsonl``, ``test.csv``, ...) names its task after its folder;
* a Hub dataset, ``owner/name[:config]`` or ``hub:name[:config]``;
* an in-memory ``datasets.Dataset`` or ``DatasetDict`` (see ``ContinualTask.from_dataset``), alone or as a
  ``(name, dataset)`` pair; or a dict mapping task names to specs.

Files, folders and datasets may hold classification rows (a text and a label column) or any generation
format of :mod:`.formats`; ``kind="auto"`` tells them apart by their columns.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import datasets

from .derived import GENERATION_ORDER, load_derived_task
from .formats import (
    CLASSIFICATION,
    GENERATION,
    KINDS,
    Records,
    TaskSpecError,
    check_not_free_form,
    classification_rows,
    detect_format,
    generation_rows,
    read_records,
    warn_single_example_labels,
)
from ..scoring import check_metric
from .task import ContinualTask, check_unique_names

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


DEFAULT_INSTRUCTION = "Choose one from the option.\n"
DATA_SUFFIXES = (".json", ".jsonl", ".csv")
EVAL_SPLIT_NAMES = ("test", "eval", "dev", "validation")
SPLIT_NAMES = ("train", *EVAL_SPLIT_NAMES)
InMemory = Union[datasets.Dataset, datasets.DatasetDict]
Spec = Union[str, InMemory, tuple[str, Union[str, InMemory]]]


def load_continual_tasks(
    specs: Sequence[Spec] | Mapping[str, str | InMemory] | str | InMemory,
    data_dir: Optional[str | os.PathLike] = None,
    *,
    kind: str = "auto",
    text_column: Optional[str] = None,
    label_column: Optional[str] = None,
    prompt_column: Optional[str] = None,
    completion_column: Optional[str] = None,
    instruction: Optional[str] = None,
    metrics: Optional[dict[str, str]] = None,
    max_train_samples: Optional[int] = None,
    max_train_per_label: Optional[int] = None,
    max_eval_samples: Optional[int] = None,
    eval_split: str = "test",
    eval_fraction: float = 0.2,
    seed: int = 42,
) -> list[ContinualTask]:
    """Resolve task specs (see the module docstring) into validated, deterministically subsampled tasks.

    ``specs``: a list of string specs (or one string of them, comma or space separated), in-memory ``Dataset`` /
    ``DatasetDict`` objects and ``(name, spec)`` pairs; or a dict mapping task names to specs. A string spec is
    renamed with ``NAME=SPEC``; a dataset without a name is named after the Hub dataset it was loaded from
    (``info.dataset_name``), else ``task<N>`` by its 1-based position among the specs.
    Every spec is checked before anything is returned, so a bad one fails before any training starts.
    ``kind``: ``auto`` (by the columns), ``classification`` or ``generation``. ``instruction`` precedes every
    prompt of file, Hub and dataset tasks (default: "Choose one from the option." for classification, none for generation).
    ``metrics`` maps task names to metric names (see :mod:`peft_continual.scoring`). Subsampling is label-balanced
    for classification (``max_train_per_label`` first, then ``max_train_samples``/``max_eval_samples`` take labels
    in turn) and a seeded random sample for generation (``max_train_per_label`` does not apply).
    """
    specs = _spec_list(specs)
    if not specs:
        raise TaskSpecError("no task specs given: pass e.g. ['dbpedia', 'amazon'] or paths to data files")
    for name, value in (("max_train_samples", max_train_samples), ("max_train_per_label", max_train_per_label),
                        ("max_eval_samples", max_eval_samples)):  # fmt: skip
        if value is not None and value <= 0:
            raise TaskSpecError(f"{name} must be a positive number, got {value}")
    _check_options(kind, eval_fraction)
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    options = dict(kind=kind, text_column=text_column, label_column=label_column, prompt_column=prompt_column,
                   completion_column=completion_column, instruction=instruction, eval_split=eval_split,
                   eval_fraction=eval_fraction, seed=seed)  # fmt: skip
    tasks = []
    for position, spec in enumerate(specs, 1):
        task = _load_spec(spec, position, data_dir, options)
        task.train = _subset(task, task.train, max_train_per_label, max_train_samples, seed)
        task.eval = _subset(task, task.eval, None, max_eval_samples, seed)
        tasks.append(task)
    check_unique_names(tasks)
    for name, metric in (metrics or {}).items():
        match = [t for t in tasks if t.name == name]
        if not match:
            raise TaskSpecError(f"metric given for task {name!r}, which is not among the tasks {[t.name for t in tasks]}")
        match[0].metric = check_metric(metric, match[0].where)
    return tasks


def _check_options(kind: str, eval_fraction: float) -> None:
    if not 0 < eval_fraction < 1:
        raise TaskSpecError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if kind not in KINDS:
        raise TaskSpecError(f"kind must be one of {KINDS}, got {kind!r}")


def _spec_list(specs) -> list:
    """Specs as a list: a string splits at commas and spaces, a dataset is one spec, a dict maps names to specs."""
    if isinstance(specs, str):
        return [s for s in re.split(r"[,\s]+", specs) if s]
    if isinstance(specs, (datasets.Dataset, datasets.DatasetDict)):
        return [specs]
    if isinstance(specs, Mapping):
        split_keys = [k for k in specs if str(k).lower() in SPLIT_NAMES]
        if split_keys:
            raise TaskSpecError(
                f"the dict of task specs has split names {split_keys} as task names: for the splits of one task pass "
                "datasets.DatasetDict(train=..., test=...); to name a task like a split anyway, pass [(name, dataset)]"
            )
        return list(specs.items())
    return list(specs)


def _load_spec(spec: Any, position: int, data_dir, options: dict) -> ContinualTask:
    """One spec of any accepted kind: a string, a dataset, or a ``(name, spec)`` pair."""
    name = None
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        name, spec = spec
        if isinstance(spec, str):
            return _load_one(f"{name}={spec}", data_dir, **options)
    if isinstance(spec, str):
        return _load_one(spec, data_dir, **options)
    if isinstance(spec, (datasets.Dataset, datasets.DatasetDict)):
        return task_from_dataset(name or _dataset_name(spec, position), spec, **options)
    streaming = ""
    if isinstance(spec, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        streaming = " (streamed, read lazily: load it without streaming=True, or build a Dataset with Dataset.from_list)"
    raise TaskSpecError(
        f"task spec {position} is a {type(spec).__name__}{streaming}: expected a string spec, a datasets.Dataset or "
        "DatasetDict, or a (name, spec) pair"
    )


def _dataset_name(dataset: InMemory, position: int) -> str:
    """The Hub dataset's name (``info.dataset_name``, which ``load_dataset`` sets), else ``task<position>``.

    A dataset read from local files by a packaged builder (``json``, ``csv``, ...) carries that builder's name instead.
    """
    splits = list(dataset.values()) if isinstance(dataset, datasets.DatasetDict) else [dataset]
    info = splits[0].info if splits else None
    named = info is not None and info.dataset_name and info.dataset_name != info.builder_name
    return info.dataset_name if named else f"task{position}"


def task_from_dataset(
    name: str, dataset: InMemory, *, kind: str = "auto", text_column: Optional[str] = None,
    label_column: Optional[str] = None, prompt_column: Optional[str] = None, completion_column: Optional[str] = None,
    instruction: Optional[str] = None, eval_split: str = "test", eval_fraction: float = 0.2, seed: int = 42,
) -> ContinualTask:  # fmt: skip
    """``ContinualTask.from_dataset``; its options are named here so that a mistyped one is an error, not ignored."""
    _check_options(kind, eval_fraction)
    options = dict(kind=kind, text_column=text_column, label_column=label_column, prompt_column=prompt_column,
                   completion_column=completion_column, instruction=instruction, eval_split=eval_split,
                   eval_fraction=eval_fraction, seed=seed)  # fmt: skip
    if isinstance(dataset, datasets.DatasetDict):
        return _from_dataset_dict(dataset, name, "in-memory DatasetDict", "in-memory DatasetDict", **options)
    if not isinstance(dataset, datasets.Dataset):
        raise TaskSpecError(f"task {name!r}: expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")
    return _from_records(_dataset_records(dataset), None, name, f"task {name!r} (in-memory Dataset)", "in-memory Dataset",
                         label_names=_class_names(dataset, label_column), **options)  # fmt: skip


def _load_one(spec: str, data_dir, **options) -> ContinualTask:
    name, _, source = spec.partition("=") if "=" in spec else (None, "", spec)
    source = source.strip()
    path = Path(source).expanduser()
    known = {k.lower(): k for k in BENCHMARK_TASKS}
    try:
        if path.suffix.lower() in DATA_SUFFIXES:
            if not path.is_file():
                raise TaskSpecError(f"task spec {spec!r}: file {str(path)!r} does not exist")
            return _load_file(path, name, **options)
        if path.is_dir():
            if (path / "labels.json").is_file():
                return _load_benchmark_folder(path, name or path.name, spec)
            return _load_split_folder(path, name or path.name, spec, **options)
        if source in GENERATION_ORDER:
            task = load_derived_task(source, data_dir, spec)
            task.name = name or task.name
            return task
        if source.lower() in known:
            return _load_benchmark_folder(_find_benchmark_folder(known[source.lower()], data_dir, spec), name or known[source.lower()], spec)
        hub = source[4:] if source.startswith("hub:") else source
        if source.startswith("hub:") or re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", source):
            return _load_hub(hub, name or hub.split("/")[-1].split(":")[0], spec, **options)
    except TaskSpecError:
        raise
    except Exception as exc:  # a Hub error, an unreadable file, ...
        raise TaskSpecError(f"task spec {spec!r}: could not load it: {exc}") from exc
    raise TaskSpecError(
        f"task spec {spec!r} is not a known benchmark task ({', '.join(sorted(BENCHMARK_TASKS))}), nor a task of the "
        f"offline generation sequence ({', '.join(GENERATION_ORDER)}), nor an existing file or folder; for a Hub "
        "dataset write 'owner/name[:config]' or 'hub:name[:config]'"
    )


logger = logging.getLogger(__name__)


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
        records = read_records(path)
        rows = classification_rows(records, "sentence", "label", f"task {name!r} ({path})")
        if drop_no_gold:
            rows = [r for r in rows if r["label"] != NO_GOLD_LABEL]
        return datasets.Dataset.from_dict({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})

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


def _load_file(path: Path, name: Optional[str], **options) -> ContinualTask:
    """One file: all its rows, a part held out for evaluation. A split's file (``dir/train.jsonl``) read alone names
    its task after the folder, and the split it makes is a warning, since a test file may lie beside it."""
    note = ""
    if path.stem.lower() in SPLIT_NAMES:
        folder = path.resolve().parent
        named = f"named {name!r}" if name else f"named {folder.name!r} after its folder"
        name = name or folder.name or path.stem
        beside = [f"{s}{x}" for s in EVAL_SPLIT_NAMES for x in DATA_SUFFIXES
                  if (folder / f"{s}{x}").is_file() and f"{s}{x}" != path.name]  # fmt: skip
        note = (
            f". {path.name} is a split's file read alone (as the whole task, {named}); to train on "
            f"train{path.suffix} and evaluate on a file of your own, give the folder {str(folder)!r} with train and "
            "test/eval/dev/validation files" + (f" (it has {', '.join(beside)})" if beside else "")
        )
    name = name or path.stem
    return _from_records(read_records(path), None, name, f"task {name!r} ({path})", str(path), hold_out_note=note, **options)


def _load_split_folder(folder: Path, name: str, spec: str, **options) -> ContinualTask:
    """A folder with a ``train`` file and an evaluation file (``test``/``eval``/``dev``/``validation``)."""

    def find(stems):
        return next((folder / f"{s}{x}" for s in stems for x in DATA_SUFFIXES if (folder / f"{s}{x}").is_file()), None)

    train_file, eval_file = find(("train",)), find(EVAL_SPLIT_NAMES)
    if train_file is None:
        raise TaskSpecError(
            f"task spec {spec!r}: {str(folder)!r} has no train.json/.jsonl/.csv (and no labels.json of the CL_Benchmark "
            "layout)"
        )
    eval_records = read_records(eval_file) if eval_file else None
    return _from_records(read_records(train_file), eval_records, name, f"task {name!r} ({train_file})", str(folder),
                         eval_where=f"task {name!r} ({eval_file})", **options)  # fmt: skip


def _from_records(
    train: Records, evaluation: Optional[Records], name: str, where: str, source: str, *, kind, text_column,
    label_column, prompt_column, completion_column, instruction, eval_fraction, seed, label_names=None,
    eval_where: Optional[str] = None, hold_out_note: str = "", **_,
) -> ContinualTask:  # fmt: skip
    """A task from rows read from files, datasets or the Hub; without evaluation rows, a held-out part of the training
    rows (logged; a warning with ``hold_out_note``). ``where``/``eval_where`` name the rows' origin in errors."""
    eval_where = eval_where or where
    if not train:
        raise TaskSpecError(f"{where}: no examples (empty data)")
    columns = list(dict.fromkeys(k for r in train for k in r))
    fmt = detect_format(columns, prompt_column, completion_column)
    if kind == GENERATION and fmt == CLASSIFICATION:
        if "prompt" not in columns:
            raise TaskSpecError(
                f"{where}: no generation format found in columns {columns}: expected prompt/completion, messages, "
                "instruction/input/output or prompt/answer, or name the columns with prompt_column=/completion_column="
            )
        fmt = "prompt_completion"
    if kind == CLASSIFICATION and fmt != CLASSIFICATION and not (text_column or label_column):
        raise TaskSpecError(f"{where}: columns {columns} hold a generation format ({fmt}); use kind='generation' or 'auto'")
    if fmt != CLASSIFICATION and kind != CLASSIFICATION:
        def rows_of(records, at):
            return datasets.Dataset.from_list(generation_rows(records, fmt, at, prompt_column, completion_column))

        train_rows = rows_of(train, where)
        eval_rows = rows_of(evaluation, eval_where) if evaluation is not None else None
        if eval_rows is None:
            train_rows, eval_rows = _random_split(train_rows, eval_fraction, seed)
            _say_held_out(train_rows, eval_rows, where, eval_fraction, hold_out_note)
        return ContinualTask(name, train_rows, eval_rows, instruction=instruction or "", source=source, kind=GENERATION)

    train_rows = classification_rows(train, text_column, label_column, where, label_names)
    eval_rows = classification_rows(evaluation, text_column, label_column, eval_where, label_names) if evaluation is not None else None
    check_not_free_form([r["label"] for r in train_rows], where)
    labels = list(label_names) if label_names else sorted({r["label"] for r in train_rows})
    train_set = datasets.Dataset.from_list(train_rows)
    if eval_rows is None:
        warn_single_example_labels(Counter(train_set["label"]), where)
        train_set, eval_set = _stratified_split(train_set, eval_fraction, seed)
        _say_held_out(train_set, eval_set, where, eval_fraction, hold_out_note)
    else:
        eval_set = datasets.Dataset.from_list(eval_rows) if eval_rows else datasets.Dataset.from_dict({"text": [], "label": []})
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    return ContinualTask(name, train_set, eval_set, labels, instruction=instruction, source=source)


def _say_held_out(train: datasets.Dataset, evaluation: datasets.Dataset, where: str, eval_fraction: float, note: str):
    logger.log(
        logging.WARNING if note else logging.INFO,
        f"{where}: no evaluation split given, so {len(evaluation)} of its {len(train) + len(evaluation)} rows are held "
        f"out for evaluation (eval_fraction={eval_fraction}) and {len(train)} train{note}",
    )


def _dataset_records(ds: datasets.Dataset) -> Records:
    return Records(ds.to_list(), [f"row {i}" for i in range(len(ds))])


def _class_names(ds: datasets.Dataset, label_column: Optional[str]) -> Optional[list[str]]:
    feature = ds.features.get(label_column or "label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _from_dataset_dict(dsd: datasets.DatasetDict, name: str, origin: str, source: str, **options) -> ContinualTask:
    """A task from a ``train`` split and the evaluation split :func:`_eval_split_name` picks (none: a held-out part)."""
    if "train" not in dsd:
        raise TaskSpecError(f"task {name!r} ({origin}): no 'train' split (found {list(dsd)}); name the training split 'train'")
    eval_name = _eval_split_name(dsd, f"task {name!r} ({origin})", **options)
    return _from_records(
        _dataset_records(dsd["train"]), _dataset_records(dsd[eval_name]) if eval_name else None, name,
        f"task {name!r} ({origin}, 'train' split)", source, eval_where=f"task {name!r} ({origin}, {eval_name!r} split)",
        label_names=_class_names(dsd["train"], options["label_column"]), **options,
    )  # fmt: skip


def _eval_split_name(dsd: datasets.DatasetDict, where: str, *, eval_split, kind, label_column, prompt_column,
                     completion_column, **_) -> Optional[str]:  # fmt: skip
    """``eval_split``, else the first of ``test``/``eval``/``dev``/``validation`` there, skipping splits without labels.

    GLUE-style test splits hide their labels as -1; read through the ``ClassLabel`` names, -1 would be the last class
    and every row would score against it.
    """
    candidates = [s for s in dict.fromkeys((eval_split, *EVAL_SPLIT_NAMES)) if s in dsd]
    fmt = detect_format(dsd["train"].column_names, prompt_column, completion_column)
    if not (kind == CLASSIFICATION or (kind != GENERATION and fmt == CLASSIFICATION)):  # generation: no labels to check
        return candidates[0] if candidates else None
    column = label_column or "label"
    unlabelled = {s: why for s in candidates if (why := _no_labels(dsd[s], column))}
    labelled = [s for s in candidates if s not in unlabelled]
    if unlabelled and not labelled:
        raise TaskSpecError(
            f"{where}: no evaluation split has labels ({'; '.join(f'{s!r}: {why}' for s, why in unlabelled.items())}). "
            "Give a labelled evaluation split, or hold out part of 'train': load the dataset with datasets.load_dataset "
            "and pass DatasetDict(train=dataset['train']) as the task spec"
        )
    if candidates and candidates[0] in unlabelled:
        logger.warning(
            f"{where}: the {candidates[0]!r} split has no labels ({unlabelled[candidates[0]]}): evaluating on the "
            f"{labelled[0]!r} split instead"
        )
    return labelled[0] if labelled else None


def _no_labels(split: datasets.Dataset, column: str) -> Optional[str]:
    """Why ``split`` cannot be scored (no label column, or only negative integer labels), or None."""
    if column not in split.column_names:
        return f"no {column!r} column"
    integer = str(getattr(split.features[column], "dtype", "")).startswith("int")  # a ClassLabel's too
    if integer and len(split) and all(label is None or label < 0 for label in split[column]):
        return f"all {len(split)} {column!r} values are negative: -1 marks a hidden label, as in GLUE's test splits"
    return None


def _load_hub(hub_id: str, name: str, spec: str, **options) -> ContinualTask:
    repo, _, config = hub_id.partition(":")
    try:
        dsd = datasets.load_dataset(repo, config or None)
    except Exception as exc:
        first = Path(spec.partition("=")[2] or spec).parts[0]
        local = " (a local folder of that name exists: is the file name or its extension mistyped?)" if Path(first).is_dir() else ""
        raise TaskSpecError(f"task spec {spec!r}: no such file or folder, and not a Hub dataset{local}: {exc}") from exc
    return _from_dataset_dict(dsd, name, f"Hub dataset {hub_id!r}", f"hub:{hub_id}", **options)


# ----------------------------------------------------------------------------------------------- subsampling


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


def _subset(task: ContinualTask, ds: datasets.Dataset, per_label: Optional[int], total: Optional[int], seed: int) -> datasets.Dataset:
    """Label-balanced for classification, a seeded random sample for generation; deterministic either way."""
    if task.kind == GENERATION:
        if total is None or total >= len(ds):
            return ds
        return ds.select(sorted(random.Random(seed).sample(range(len(ds)), total)))
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


def _random_split(ds: datasets.Dataset, eval_fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(ds) * eval_fraction))) if len(ds) > 1 else 0
    return ds.select(sorted(order[n_eval:])), ds.select(sorted(order[:n_eval]))
