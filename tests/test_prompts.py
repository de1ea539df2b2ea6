"""Shortening an over-long generation prompt: the question and the text next to the answer stay, with or without a
chat template (a classification text keeps its start: see test_tasks)."""

import json

import pytest

from conftest import generation_task
from peft_continual.tasks import PromptEncoder

QUESTION = "opposite of hot"
# Oldest first: a turn that goes whole, a long document whose end is kept, the latest answer, then the question.
TURNS = [
    {"role": "user", "content": "lemon " + "the big cat " * 10},
    {"role": "assistant", "content": "grape " * 10},
    {"role": "user", "content": "mango " + "the big cat " * 40 + "banana"},
    {"role": "assistant", "content": "tiger"},
]


@pytest.fixture(params=[False, True], ids=["reference", "chat"])
def encoder(request, tokenizer, chat_tokenizer):
    return PromptEncoder(chat_tokenizer if request.param else tokenizer, 64, chat=request.param)


def latest_turns(encoder):
    """The last answer and the question, as each prompt style writes them."""
    if encoder.chat:
        return f"<|im_start|>assistant\ntiger<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    return f"Assistant: tiger\nUser: {QUESTION}\nAnswer:"


def test_long_conversation_keeps_the_question_and_the_latest_turns(encoder):
    row = {"prompt": QUESTION, "completion": "cold", "context": json.dumps(TURNS)}
    text, ids = encoder.prompt(generation_task("opposites"), row)
    assert len(ids) <= 64 and ids == encoder._encode(text)
    assert text.endswith(latest_turns(encoder))
    assert "banana" in text  # the end of the document before the latest answer
    assert not any(gone in text for gone in ("mango", "grape", "lemon"))  # its start, and the older turns


def test_long_generation_prompt_loses_its_start_not_the_text_next_to_the_answer(encoder):
    row = {"prompt": "mango " + "the big cat " * 40 + QUESTION, "completion": "cold", "context": ""}
    text, ids = encoder.prompt(generation_task("opposites"), row)
    assert 56 <= len(ids) <= 64
    assert ("mango" not in text) and (QUESTION + ("<|im_end|>" if encoder.chat else "\nAnswer:")) in text
