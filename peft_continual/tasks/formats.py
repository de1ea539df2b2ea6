"""Rows of any supported format, brought to one of two shapes, with errors that name the file and the row.

* classification: ``text`` and ``label`` (a label option, generated as text);
* generation: ``prompt``, ``completion`` and ``context`` (earlier chat turns as a JSON list, ``""`` when none).

Generation formats follow TRL's dataset conventions: standard ``prompt``/``completion``; conversational
``messages`` (the last assistant turn is the target, earlier turns are context); conversational
``prompt``/``completion`` (``prompt`` a list of messages ending with the user turn, ``completion`` a list holding the
assistant message); Alpaca ``instruction``/``input``/``output``; TRACE-style ``prompt``/``answer``.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence


class TaskSpecError(ValueError):
    """A task spec or its data is unusable; raised before any training starts."""


CLASSIFICATION, GENERATION = "classification", "generation"
KINDS = ("auto", CLASSIFICATION, GENERATION)
GENERATION_COLUMNS = ("prompt", "completion", "context")
TEXT_COLUMN_CANDIDATES = ("sentence", "text", "content", "input")
COLUMN_OPTIONS = "text_column=/label_column= (classification) or prompt_column=/completion_column= (generation)"


# ------------------------------------------------------------------------------------------------ reading files


class Records(list):
    """Rows read from a file, with where each came from (``line 3`` of a JSONL/CSV file, ``row 2`` of a JSON array)."""

    def __init__(self, rows: Sequence[dict[str, Any]], locations: Sequence[str]):
        super().__init__(rows)
        self.locations = list(locations)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TaskSpecError(f"{str(path)!r} line {line}: not valid UTF-8 ({exc.reason}); re-save the file as UTF-8") from None


def _jsonl(text: str, path: Path) -> Records:
    rows, locations = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskSpecError(f"{str(path)!r} line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise TaskSpecError(f"{str(path)!r} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        locations.append(f"line {number}")
    return Records(rows, locations)


def _json(text: str, path: Path) -> Records:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        first = text.lstrip().split("\n", 1)[0]
        if first.startswith("{") and exc.msg == "Extra data":  # JSON Lines saved as .json, as `datasets` accepts
            return _jsonl(text, path)
        raise TaskSpecError(f"{str(path)!r} line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise TaskSpecError(f"{str(path)!r}: expected a JSON array of objects (or JSON Lines)")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise TaskSpecError(f"{str(path)!r} row {i}: expected a JSON object, got {type(row).__name__}")
    return Records(data, [f"row {i}" for i in range(len(data))])


def _csv(text: str, path: Path) -> Records:
    lines = text.splitlines()
    if not lines:
        return Records([], [])
    # The delimiter that splits the header into the most fields: comma, semicolon or tab.
    delimiter = max(",;\t", key=lambda d: len(next(csv.reader([lines[0]], delimiter=d))))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader)
    rows, locations = [], []
    for fields in reader:
        if not fields or fields == [""]:
            continue
        line = reader.line_num
        if len(fields) != len(header):
            raise TaskSpecError(
                f"{str(path)!r} line {line}: {len(fields)} fields, the header has {len(header)} ({header}); a text "
                f"with a {delimiter!r} in it must be quoted (\"...\")"
            )
        rows.append(dict(zip(header, fields)))
        locations.append(f"line {line}")
    return Records(rows, locations)


def read_records(path: Path) -> Records:
    """Rows of a ``.json`` (array or JSON Lines), ``.jsonl`` or ``.csv`` file (comma, semicolon or tab separated)."""
    text = _decode(path)
    suffix = path.suffix.lower()
    return _csv(text, path) if suffix == ".csv" else _jsonl(text, path) if suffix == ".jsonl" else _json(text, path)


# ------------------------------------------------------------------------------------------------ shapes


def detect_format(columns: Sequence[str], prompt_column: Optional[str] = None, completion_column: Optional[str] = None) -> str:
    """``messages``, ``alpaca``, ``prompt_completion`` or ``classification`` from the column names.

    Column options apply to every file of a sequence, so a named prompt/completion column only counts where it exists.
    """
    columns = set(columns)
    if {prompt_column, completion_column} & columns:  # named generation columns that this file has
        return "prompt_completion"
    if "messages" in columns:
        return "messages"
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if "prompt" in columns and ({"completion", "answer"} & columns):
        return "prompt_completion"
    return CLASSIFICATION


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value.strip() else None


def generation_rows(
    records: Records, fmt: str, where: str, prompt_column: Optional[str] = None, completion_column: Optional[str] = None
) -> list[dict[str, str]]:
    """Rows of a generation format as ``prompt``/``completion``/``context``; a bad row is an error naming it."""
    if fmt == "prompt_completion":
        columns = set().union(*(r.keys() for r in records)) if records else set()
        prompt_column = prompt_column or "prompt"
        completion_column = completion_column or ("completion" if "completion" in columns else "answer")
        for needed in (prompt_column, completion_column):
            if needed not in columns:
                raise TaskSpecError(f"{where}: column {needed!r} not found; columns are {sorted(columns)}")
    elif fmt == "alpaca":
        completion_column = "output"
    rows = []
    for row, location in zip(records, records.locations):
        at = f"{where} {location}"
        if fmt == "messages":
            prompt, completion, context = _from_messages(row.get("messages"), at)
        elif fmt == "alpaca":
            instruction, extra = row.get("instruction"), row.get("input") or ""
            if _text(instruction) is None:
                raise TaskSpecError(f"{at}: empty or missing 'instruction'")
            prompt, completion, context = instruction + (f"\n{extra}" if str(extra).strip() else ""), row.get("output"), ""
        else:
            prompt, completion, context = row.get(prompt_column), row.get(completion_column), ""
            if isinstance(prompt, list):
                prompt, completion, context = _from_conversation(prompt, completion, at, prompt_column, completion_column)
            elif _text(prompt) is None:
                raise TaskSpecError(f"{at}: empty or missing {prompt_column!r}")
        if completion is None:
            raise TaskSpecError(f"{at}: no completion (column {completion_column!r} missing): every row needs a target")
        if _text(completion) is None:
            raise TaskSpecError(f"{at}: empty completion {completion!r}: every row needs a non-empty target text")
        rows.append({"prompt": prompt, "completion": completion.strip(), "context": context})
    return rows


def _from_conversation(prompt: list, completion: Any, at: str, prompt_column: str, completion_column: str):
    """TRL's conversational prompt/completion row, read as the messages ``prompt + completion`` so that earlier turns
    become context exactly as for ``messages`` rows; errors name the format, since the columns look standard."""
    fmt = f"{prompt_column!r} + {completion_column!r} (a list-valued prompt: TRL's conversational prompt/completion format)"
    if completion is None:
        raise TaskSpecError(f"{at}: no completion (column {completion_column!r} missing): every row needs a target")
    target = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    one_reply = isinstance(target, list) and len(target) == 1 and isinstance(target[0], dict)
    if not (one_reply and target[0].get("role") == "assistant"):
        raise TaskSpecError(
            f"{at}: {fmt}: {completion_column!r} must be a list holding the one assistant message, e.g. "
            f"[{{'role': 'assistant', 'content': 'Paris'}}]; got {completion!r:.120}"
        )
    if not all(isinstance(m, dict) for m in prompt):
        raise TaskSpecError(
            f"{at}: {fmt}: {prompt_column!r} must be a list of {{'role', 'content'}} messages; got {prompt!r:.120}"
        )
    return _from_messages(prompt + target, at, fmt)


def _from_messages(messages: Any, at: str, what: str = "'messages'") -> tuple[str, str, str]:
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise TaskSpecError(f"{at}: {what} must be a non-empty list of {{'role', 'content'}} objects")
    roles = [m.get("role") for m in messages]
    if "assistant" not in roles:
        raise TaskSpecError(f"{at}: {what} has no assistant turn: the last assistant turn is the target")
    if roles[-1] != "assistant":
        raise TaskSpecError(f"{at}: the assistant turn is not last (roles {roles}): the last turn must be the target")
    if len(messages) < 2 or roles[-2] != "user":
        raise TaskSpecError(f"{at}: {what}: the target assistant turn must follow a user turn (roles {roles})")
    for m in messages:
        if not isinstance(m.get("content"), str):
            raise TaskSpecError(f"{at}: {what}: every message needs a text 'content' (roles {roles})")
    context = [{"role": m["role"], "content": m["content"]} for m in messages[:-2]]
    if _text(messages[-2]["content"]) is None:
        raise TaskSpecError(f"{at}: the last user turn is empty")
    return messages[-2]["content"], messages[-1]["content"], json.dumps(context) if context else ""


def pick_text_column(columns: Sequence[str], text_column: Optional[str], where: str) -> str:
    if text_column is not None:
        if text_column not in columns:
            raise TaskSpecError(f"{where}: text column {text_column!r} not found; columns are {list(columns)}")
        return text_column
    for candidate in TEXT_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    raise TaskSpecError(f"{where}: no text column found among {list(columns)}; name the columns with {COLUMN_OPTIONS}")


def classification_rows(
    records: Records, text_column: Optional[str], label_column: Optional[str], where: str, label_names=None
) -> list[dict[str, str]]:
    """Rows as ``text``/``label``: labels are stripped of surrounding spaces; non-string labels are an error.

    Integer labels are read through ``label_names`` (a ``ClassLabel``'s names) only within range: a negative index
    would silently name the last class, and -1 is how GLUE-style test splits hide their labels.
    """
    if not records:
        return []
    columns = list(dict.fromkeys(k for r in records for k in r))
    text_column = pick_text_column(columns, text_column, where)
    label_column = label_column or "label"
    if label_column not in columns:
        raise TaskSpecError(
            f"{where}: label column {label_column!r} not found; columns are {columns}. Name the columns with "
            f"{COLUMN_OPTIONS}"
        )
    rows, out_of_range = [], []
    for row, location in zip(records, records.locations):
        text, label = row.get(text_column), row.get(label_column)
        if label_names is not None and isinstance(label, int):
            if not 0 <= label < len(label_names):
                out_of_range.append(f"{location}: {label}")
                continue
            label = label_names[label]
        if not isinstance(label, str):
            raise TaskSpecError(
                f"{where} {location}: label {label!r} is not a string; labels are generated as text, so map them to "
                "words first (e.g. 0 -> 'negative')"
            )
        rows.append({"text": text, "label": label.strip()})
    if out_of_range:
        raise TaskSpecError(
            f"{where}: {len(out_of_range)} of {len(records)} rows have an integer label outside the {len(label_names)} "
            f"classes 0..{len(label_names) - 1} {list(label_names)} (first {out_of_range[0]}); -1 marks a hidden label "
            "(GLUE-style test splits do not publish theirs): evaluate on a labelled split (e.g. 'validation'), or drop "
            f"those rows first (dataset.filter(lambda row: 0 <= row[{label_column!r}] < {len(label_names)}))"
        )
    return rows


def check_label_options(labels: Sequence[str], where: str) -> list[str]:
    """Label options stripped of surrounding spaces; options that differ only by case are refused."""
    labels = [l.strip() if isinstance(l, str) else l for l in labels]
    if not labels or not all(isinstance(l, str) and l for l in labels):
        raise TaskSpecError(
            f"{where}: label options must be non-empty strings, got {labels!r}; labels are generated as text, so map "
            "numeric labels to words first (e.g. 0 -> 'negative')"
        )
    duplicates = sorted(l for l, n in Counter(labels).items() if n > 1)
    if duplicates:
        raise TaskSpecError(f"{where}: label option(s) {duplicates} given more than once")
    by_case: dict[str, list[str]] = {}
    for l in labels:
        by_case.setdefault(l.casefold(), []).append(l)
    clashes = [group for group in by_case.values() if len(group) > 1]
    if clashes:
        raise TaskSpecError(
            f"{where}: label options {clashes[0]} differ only by case and would be separate classes: spell each label "
            "one way in the data"
        )
    return labels


def check_not_free_form(labels: Sequence[str], where: str) -> None:
    """Refuse a 'classification' whose answers are nearly all distinct: it is a generation task."""
    counts = Counter(labels)
    singletons = sum(1 for n in counts.values() if n == 1)
    if len(counts) > 10 and singletons > len(counts) / 2:
        raise TaskSpecError(
            f"{where}: {len(counts)} distinct labels, {singletons} of them seen once: these look like free-form "
            "answers, not label options. Load it as a generation task: kind='generation' (--task_kind generation) with "
            "prompt_column=/completion_column= naming the columns"
        )


def warn_single_example_labels(counts: Counter, where: str) -> None:
    lonely = sorted(l for l, n in counts.items() if n == 1)
    if lonely:
        warnings.warn(
            f"{where}: label(s) {lonely} have a single example: it is used for training and the label is never "
            "evaluated; add examples or give an evaluation file",
            stacklevel=3,
        )
