"""Token ids of prompts and targets with an exact boundary, loss masks, and the collators.

The target's ids are read off the tokenisation of the *whole* string prompt + target, not of the target alone:
SentencePiece tokenizers (Llama-2, Mistral) put a ``▁`` before a piece tokenised on its own, so a target tokenised
alone would train a token that never follows the prompt at inference. The prompt is always tokenised whole too
(shortening re-renders it), so training and evaluation see the same prompt ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import datasets
import torch

from .formats import GENERATION, TaskSpecError
from .prompts import answer_text, chat_frame, chat_messages, conversation, prompt_parts, with_turns

IGNORE_INDEX = -100
_HI = [{"role": "user", "content": "hi"}]  # a minimal conversation, to read how the template frames an answer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def special_prefix(tokenizer) -> list[int]:
    """What the tokenizer puts before a text (e.g. BOS for Llama, nothing for GPT-2)."""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return [i for i in ids if i != tokenizer.eos_token_id]


@dataclass
class PromptEncoder:
    """Encodes rows for one tokenizer and prompt style (reference prompt, or chat template when ``chat``)."""

    tokenizer: Any
    max_source_length: int
    chat: bool = False

    def __post_init__(self):
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token: set tokenizer.eos_token before training")
        if self.max_source_length <= 0:
            raise ValueError(f"max_source_length must be positive, got {self.max_source_length}")
        # The chat template renders its own BOS as text; the reference prompt gets the tokenizer's prefix.
        self.prefix = [] if self.chat else special_prefix(self.tokenizer)
        self.frame = chat_frame(self.tokenizer, _HI) if self.chat else ("", "", "")
        self.eot = self.frame[2].rstrip()  # the template's end-of-turn after an answer (e.g. ``<|im_end|>``): a stop

    def _encode(self, text: str) -> list[int]:
        return self.prefix + _ids(self.tokenizer, text)

    def _render(self, task, row: dict[str, Any]) -> tuple[str, list[int]]:
        """(text, ids) of the row's whole prompt. With a chat template, one target text (lead, answer, end-of-turn)
        serves every conversation, so each must frame the answer alike."""
        if not self.chat:
            text = "".join(prompt_parts(task, row, chat=False))
        else:
            text, lead, after = chat_frame(self.tokenizer, chat_messages(task, row))
            if (lead, after) != self.frame[1:]:
                raise TaskSpecError(
                    f"task {task.name!r}: the chat template writes different text around the answer in different "
                    f"conversations ({(lead, after)!r} vs {self.frame[1:]!r}), so no one target fits them all: use "
                    "chat_template='off'"
                )
        return text, self._encode(text)

    def prompt(self, task, row: dict[str, Any]) -> tuple[str, list[int]]:
        """(prompt text, ids) within ``max_source_length``: the prompt of :meth:`fit`'s row."""
        return self._render(task, self.fit(task, row))

    def fit(self, task, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with its body shortened so that its prompt fits ``max_source_length``; never the head or tail.

        A classification text loses its end (options and question frame it). A generation prompt loses its start,
        the part farthest from the answer: the oldest turns of a conversation go first, the question last.
        """
        if self._fits(task, row):
            return row
        if task.kind == GENERATION:
            return self._shorten_conversation(task, row)
        cut = self._cut(task, lambda text: {**row, "text": text}, row["text"], keep_end=False)
        return cut or self._no_room(task, {**row, "text": ""})

    def _fits(self, task, row: dict[str, Any]) -> bool:
        return len(self._render(task, row)[1]) <= self.max_source_length

    def _cut(self, task, with_content, content: str, keep_end: bool) -> Optional[dict[str, Any]]:
        """The row ``with_content(content)`` with ``content`` cut to the most tokens that fit, keeping its end (from a
        word on, not the space before it) or its start; None when none of it fits."""
        room = self.max_source_length - len(self._render(task, with_content(""))[1])
        piece = _ids(self.tokenizer, content)
        keep = min(room, len(piece))
        while keep > 0:  # re-tokenising the cut text may merge differently: cut further until it fits
            kept = self.tokenizer.decode(piece[len(piece) - keep :] if keep_end else piece[:keep])
            row = with_content(kept.lstrip() if keep_end else kept)
            length = len(self._render(task, row)[1])
            if length <= self.max_source_length:
                return row
            keep -= length - self.max_source_length
        return None

    def _shorten_conversation(self, task, row: dict[str, Any]) -> dict[str, Any]:
        """The question and the most recent turns that fit, the oldest of them possibly without its start.

        The kept turns never open with an assistant turn: templates such as Llama-2's refuse such a conversation.
        """
        turns = conversation(row)
        kept_from = len(turns)  # the oldest turn kept whole
        for start in range(len(turns) - 1, 0, -1):
            if turns[start]["role"] == "assistant":
                continue
            if not self._fits(task, with_turns(row, turns[start:])):
                break
            kept_from = start
        older = next((i for i in range(kept_from - 1, -1, -1) if turns[i]["role"] != "assistant"), None)
        if older is not None:  # the turn that did not fit whole (the question, when it alone is too long)
            turn, rest = turns[older], turns[older + 1 :]
            cut = self._cut(task, lambda text: with_turns(row, [{**turn, "content": text}] + rest), turn["content"],
                            keep_end=True)  # fmt: skip
            if cut:
                return cut
        if kept_from < len(turns):
            return with_turns(row, turns[kept_from:])
        return self._no_room(task, with_turns(row, [{"role": "user", "content": ""}]))

    def _no_room(self, task, empty_row: dict[str, Any]):
        what = "instruction and chat template" if task.kind == GENERATION else "instruction, options and question"
        raise TaskSpecError(
            f"task {task.name!r}: max_source_length={self.max_source_length} leaves no room for the text: "
            f"{what} alone take {len(self._render(task, empty_row)[1])} tokens; raise max_source_length"
        )

    def target(self, task, row: dict[str, Any], prompt_text: str, prompt_ids: list[int]) -> list[int]:
        """Target ids (with what the template writes after the answer, or EOS), exactly as they follow the prompt in
        the whole string."""
        answer = answer_text(task, row)
        if self.chat:
            self._check_answer_kept(task, answer)
        # With a template, all it writes after the answer (ChatML's "<|im_end|>\n"), as TRL's SFTTrainer trains it.
        target = self.frame[1] + answer + self.frame[2] if self.chat else " " + answer
        full = self._encode(prompt_text + target)
        if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
            ids = full[len(prompt_ids) :]
        else:  # the prompt's last token merges with the target's first: tokenise the target on its own
            ids = _ids(self.tokenizer, target)
        if not (self.chat and self.eot):
            ids = ids + [self.tokenizer.eos_token_id]
        return ids

    def _check_answer_kept(self, task, answer: str) -> None:
        """The template must write the answer as given (Qwen3's moves a ``<think>`` block out of it, Llama-2's strips
        spaces): otherwise what is trained is not what the template renders."""
        prompt, lead, after = self.frame
        rendered = self.tokenizer.apply_chat_template(_HI + [{"role": "assistant", "content": answer}], tokenize=False)
        if rendered != prompt + lead + answer + after:
            raise TaskSpecError(
                f"task {task.name!r}: the chat template rewrites the answer {answer!r:.80} (it renders "
                f"{rendered[len(prompt):]!r:.120}), so training on it would not match the template's rendering: "
                "clean the answers (e.g. surrounding spaces, <think> blocks) or use chat_template='off'"
            )

    def stop_ids(self) -> list[int]:
        """Token ids that end a generated answer: EOS, and the chat template's end-of-turn when it is one token."""
        stops = [self.tokenizer.eos_token_id]
        eot = _ids(self.tokenizer, self.eot) if self.eot else []
        if len(eot) == 1 and eot[0] not in stops:
            stops.append(eot[0])
        return stops


def tokenize_task(tokenizer, task, max_source_length: int, chat: bool = False) -> datasets.Dataset:
    """Training features: ``input_ids``, ``attention_mask`` and ``labels`` (-100 on every prompt token)."""
    if task.train is None:
        raise TaskSpecError(f"task {task.name!r} has no training data (it was restored from a saved run)")
    encoder = PromptEncoder(tokenizer, max_source_length, chat)
    input_ids, labels = [], []
    for row in task.train:
        text, prompt = encoder.prompt(task, row)
        target = encoder.target(task, row, text, prompt)
        input_ids.append(prompt + target)
        labels.append([IGNORE_INDEX] * len(prompt) + target)
    return datasets.Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": [[1] * len(x) for x in input_ids], "labels": labels}
    )


GENERATION_BUDGET_FLOOR = 32  # tokens a generated answer may take at least, however short the references


def fit_max_new_tokens(tokenizer, task, features: datasets.Dataset, cap: int) -> None:
    """Give a generation task without its own decoding budget the length of its longest reference (training targets
    and evaluation answers, in tokens), at least ``GENERATION_BUDGET_FLOOR``, at most ``cap``.

    A budget as short as the answers would hide what the model says after them: "Paris" cut from "Paris. The capital
    of Germany is Berlin." scores as an exact match; the floor lets such a run-on answer be seen and scored.
    """
    if task.kind == GENERATION and task.max_new_tokens is None:
        trained = max(sum(label != IGNORE_INDEX for label in row) for row in features["labels"])
        evaluated = max(len(_ids(tokenizer, answer)) + 1 for answer in task.eval["completion"])  # + end of answer
        task.max_new_tokens = min(cap, max(GENERATION_BUDGET_FLOOR, trained, evaluated))


@dataclass
class EvalEncoding:
    """A task's evaluation rows, encoded once: prompts, references, label options (classification) and stops."""

    prompts: list[list[int]]
    prompt_texts: list[str]
    references: list[str]
    options: Optional[list[list[int]]]
    stop_ids: list[int]


def encode_eval(tokenizer, task, max_source_length: int, chat: bool = False) -> EvalEncoding:
    encoder = PromptEncoder(tokenizer, max_source_length, chat)
    texts, prompts = zip(*(encoder.prompt(task, row) for row in task.eval))
    options = None
    if task.kind != GENERATION:  # every prompt ends with the same tail, so the options follow any of them alike
        options = [encoder.target(task, {"label": label}, texts[0], prompts[0]) for label in task.labels]
    references = list(task.eval["completion" if task.kind == GENERATION else "label"])
    return EvalEncoding(list(prompts), list(texts), references, options, encoder.stop_ids())


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
