"""Prompt text of a row: the reference prompt, or the tokenizer's chat template around it.

Reference form (O-LoRA/N-LoRA): ``Task:<type>\\nDataset:<name>\\n<instruction>Option: <labels> \\n<text>\\nAnswer:``
then `` <target>`` and EOS. With a chat template the user turn holds the same head and text (no ``Answer:``), the
generation prompt opens the assistant turn, and the target is followed by the template's end-of-turn.
Only the *body* (the text, or the last user turn) may be shortened to fit a length, never the head or the tail.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional

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


def prompt_parts(task, row: dict[str, Any], chat: bool) -> tuple[str, str, str]:
    """(head, body, tail) of the prompt text (the user turn when ``chat``); only ``body`` may be shortened."""
    head = f"Task:{task.task_type}\n" if task.task_type and not chat else ""
    head += ("" if chat else f"Dataset:{task.name}\n") + task.instruction
    if task.kind == GENERATION:
        body = row["prompt"]
        if not chat and row.get("context"):
            turns = json.loads(row["context"]) + [{"role": "user", "content": body}]
            body = "\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in turns)
    else:
        if task.show_options:
            head += "Option: " + ", ".join(task.labels) + " \n"
        body = row["text"]
    return head, body, "" if chat else "\nAnswer:"


def render_prompt(tokenizer, task, row: dict[str, Any], chat: bool, body: Optional[str] = None) -> str:
    """The whole prompt string (``body`` replaces the row's body, to shorten it)."""
    head, full_body, tail = prompt_parts(task, row, chat)
    text = head + (full_body if body is None else body) + tail
    if not chat:
        return text
    context = json.loads(row["context"]) if row.get("context") else []
    messages = context + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer) -> str:
    """What the chat template writes after an assistant message (e.g. ``<|im_end|>``), trailing spaces removed."""
    user = [{"role": "user", "content": "hi"}]
    opened = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    closed = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _PROBE}], tokenize=False)
    if not closed.startswith(opened) or _PROBE not in closed:
        raise TaskSpecError(
            "the tokenizer's chat template renders an assistant reply differently from its generation prompt, so "
            "the target cannot be appended exactly: use chat_template='off'"
        )
    return closed[closed.index(_PROBE) + len(_PROBE) :].rstrip()


def target_text(task, row: dict[str, Any], chat: bool, eot: str = "") -> str:
    """The target as text: `` label`` / `` completion`` after ``Answer:``; with a chat template, + end-of-turn."""
    target = row["completion"] if task.kind == GENERATION else row["label"]
    return target + eot if chat else " " + target
