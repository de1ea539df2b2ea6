"""Prompt text of a row: the reference prompt, or the tokenizer's chat template around it.

Reference form (O-LoRA/N-LoRA): ``Task:<type>\\nDataset:<name>\\n<instruction>Option: <labels> \\n<text>\\nAnswer:``
then `` <target>`` and EOS. With a chat template the user turn holds the same head and text (no ``Answer:``) and the
prompt is the template's own rendering of the whole conversation, answer included, cut where the answer starts: it
keeps whatever the template writes between its generation prompt and the answer (Qwen3's empty ``<think>`` block), so
training sees token for token what the template renders. The target is the answer and the template's end-of-turn.
Only the *body* (the text, or the conversation) may be shortened to fit a length, never the head or the tail.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from .formats import GENERATION, TaskSpecError

ChatTemplateMode = Literal["auto", "on", "off"]
CHAT_TEMPLATE_MODES = ("auto", "on", "off")
_PROBE = "\x00peft-continual-probe\x00"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_template(tokenizer, mode: ChatTemplateMode) -> bool:
    """``auto``: on when the tokenizer has a chat template; ``on`` without one is an error."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"chat_template must be one of {CHAT_TEMPLATE_MODES}, got {mode!r}")
    if mode == "on" and not has_chat_template(tokenizer):
        raise ValueError(
            f"chat_template='on' but the tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) "
            "has no chat template: use 'off' (or 'auto'), or set tokenizer.chat_template"
        )
    return mode == "on" or (mode == "auto" and has_chat_template(tokenizer))


def _context(row: dict[str, Any]) -> list[dict[str, str]]:
    return json.loads(row["context"]) if row.get("context") else []


def conversation(row: dict[str, Any]) -> list[dict[str, str]]:
    """A generation row's turns: the earlier ones (``context``), then the user's question (``prompt``)."""
    return _context(row) + [{"role": "user", "content": row["prompt"]}]


def with_turns(row: dict[str, Any], turns: list[dict[str, str]]) -> dict[str, Any]:
    """``row`` holding ``turns`` (the question last) instead of its own conversation: how a conversation is shortened."""
    return {**row, "context": json.dumps(turns[:-1]) if len(turns) > 1 else "", "prompt": turns[-1]["content"]}


def prompt_parts(task, row: dict[str, Any], chat: bool) -> tuple[str, str, str]:
    """(head, body, tail) of the prompt text (the user turn when ``chat``); only ``body`` may be shortened."""
    head = f"Task:{task.task_type}\n" if task.task_type and not chat else ""
    head += ("" if chat else f"Dataset:{task.name}\n") + task.instruction
    if task.kind == GENERATION:
        body = row["prompt"]
        if not chat and row.get("context"):
            body = "\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in conversation(row))
    else:
        if task.show_options:
            head += "Option: " + ", ".join(task.labels) + " \n"
        body = row["text"]
    return head, body, "" if chat else "\nAnswer:"


def chat_messages(task, row: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation before the answer: earlier turns, then the user turn holding the prompt text."""
    return _context(row) + [{"role": "user", "content": "".join(prompt_parts(task, row, chat=True))}]


def chat_frame(tokenizer, messages: list[dict[str, str]]) -> tuple[str, str, str]:
    """(prompt, lead, after): the template renders ``messages`` + an assistant ``answer`` as
    ``prompt + lead + answer + after``.

    ``lead`` holds the spaces right before the answer (Llama-2's after ``[/INST]``). They go with the target, as the
    space of the reference `` <target>`` does: tokenizers attach a space to the word after it, so a prompt ending in
    a space would teach the model a first token that plain text never has there.
    """
    rendered = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": _PROBE}], tokenize=False)
    if rendered.count(_PROBE) != 1:
        raise TaskSpecError(
            "the tokenizer's chat template does not write an assistant message as given, so where the answer starts "
            "in its rendering is unknown: use chat_template='off'"
        )
    before, after = rendered.split(_PROBE)
    prompt = before.rstrip(" ")
    return prompt, before[len(prompt) :], after


def answer_text(task, row: dict[str, Any]) -> str:
    """The answer alone: the completion, or the label. The target is `` answer`` after ``Answer:``; with a chat
    template, what the template writes from the end of the prompt on: the lead, the answer and the end-of-turn."""
    return row["completion"] if task.kind == GENERATION else row["label"]
