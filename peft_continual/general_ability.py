"""The built-in general-ability suite: is a continually tuned chat model still a good chat model?

Continual tuning can leave an instruct model answering every prompt with the last task's label while its task
scores look fine, so the suite measures the model beyond its tasks, offline (``data/general``, shipped with the
package), in four parts, each with per-example scores for paired intervals against the base model:

* **instructions**: prompts with verifiable constraints (IFEval's idea: lowercase, word counts, bullets, JSON, ...),
  each checked by a rule (:func:`check_constraint`), no judge model. Strict: every constraint holds; loose: the
  share that holds.
* **facts**: short factual and commonsense questions, right when an accepted answer is in the answer
  (:func:`fact_score`).
* **chat** (label-free drift): the base model's own greedy answers to generic chat prompts, scored for the tuned
  model by the mean per-token KL(base || model) of the next-token distributions on those answers (teacher-forced)
  and by token agreement (the share of those positions where the tuned model's most likely token is the base's).
  Both need no labels, no generation by the tuned model, and move even on small models, where the labelled parts sit
  near floor. (Whole-answer agreement does not: after any tuning almost no 64-token answer stays identical.)
* **leak**: how often an answer to any general prompt is one of the trained tasks' labels (:func:`leak_rate`). Only
  an answer's start decides it, so the tuned model's chat answers are generated short (``short_answer_tokens``).

The KL is exact while the base is at hand: its distributions are computed on the fly, from the model with its
adapters disabled (a ``PeftModel``) or from ``base_model``. Once adapters were merged into the base (OSF, IncLoRA's
``merge_finished_adapters``) it is not, so the base's report also keeps, at each position of its chat answers, its
most likely token and a sketch of its distribution (:func:`sketch_distribution`): its ``REFERENCE_TOP_K`` most likely
tokens and ``REFERENCE_TAIL_SAMPLES`` tokens drawn from the rest, with their log-probabilities. The KL is then exact on
the top tokens and sampled on the rest (:func:`kl_from_sketch`, unbiased).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .evaluation import PromptBatch, _batches, forward_shared_prefix, generate_batch, greedy_config
from .scoring import normalize_answer
from .statistics import Difference, paired_item_difference
from .tasks import ContinualTask, use_chat_template
from .tasks.encoding import PromptEncoder
from .tasks.formats import GENERATION

DATA_DIR = Path(__file__).resolve().parent / "data" / "general"
SUITE_PARTS = ("instructions", "facts", "chat")
MAX_PROMPT_TOKENS = 256  # the suite's prompts are one or two sentences; this only guards odd tokenizers
# General prompts are short: running them in batches of at least this many costs little memory and, on CPU, half the
# time of batches of 8 (measured on the quick suite: 28.4 s -> 15.2 s). It bounds the teacher-forced passes of the
# chat part, whose logits are [batch, answer tokens, vocabulary].
SHORT_PROMPT_BATCH = 32
# Their short answers are generated in batches of at least this many: each decoding step's fixed cost is shared by
# more rows, and the cache stays small (on CPU: 8.5 s -> 6.1 s for the quick suite's answers against batches of 32).
SHORT_ANSWER_BATCH = 64
# The sketch of the base's distribution kept per position of its chat answers, for the KL once the base is merged
# away. On SmolLM2-135M-Instruct's answers its top 20 tokens hold 88-89 % of its mass (their part alone falls 12-40 %
# short of the exact KL); with 20 draws from the rest the estimate's mean over the quick suite is within 2 % of the
# exact one, 1.6-5.3 % off per prompt (benchmarks/kl_sketch.py, three tuned adapters, both prompt formats).
REFERENCE_TOP_K = 20
REFERENCE_TAIL_SAMPLES = 20

# ----------------------------------------------------------------------------------------------- constraints


def _json_body(answer: str) -> str:
    """The answer without a surrounding ``` fence (chat models often fence JSON)."""
    fenced = re.fullmatch(r"```[A-Za-z]*\s*\n?(.*?)\n?\s*```", answer.strip(), flags=re.DOTALL)
    return fenced.group(1) if fenced else answer


def _parses_as_json(answer: str) -> bool:
    try:
        json.loads(_json_body(answer))
    except ValueError:
        return False
    return True


def _has_word(answer: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", answer, flags=re.IGNORECASE) is not None


def _bullets(answer: str) -> int:
    return sum(line.lstrip().startswith(("- ", "* ")) for line in answer.splitlines())


def _paragraphs(answer: str) -> int:
    return sum(bool(p.strip()) for p in re.split(r"\n\s*\n", answer.strip()))


def _cased(answer: str, upper: bool) -> bool:
    """Some letter, and none of the other case (an answer with no letters follows no case instruction)."""
    return any(c.isalpha() for c in answer) and answer == (answer.upper() if upper else answer.lower())


def _ends_with(answer: str, phrase: str) -> bool:
    """Case-insensitive, ignoring the final full stop, exclamation or question mark on either side."""
    return answer.strip().rstrip(".!?").rstrip().lower().endswith(phrase.strip().rstrip(".!?").lower())


# type -> (rule, its parameters). Words are whitespace-separated; matching is case-insensitive where case is not
# itself the constraint, so that e.g. "uppercase" and "starts_with Sure" can hold together.
CONSTRAINTS: dict[str, tuple[Callable[..., bool], tuple[str, ...]]] = {
    "lowercase": (lambda a: _cased(a, upper=False), ()),
    "uppercase": (lambda a: _cased(a, upper=True), ()),
    "max_words": (lambda a, n: len(a.split()) <= n, ("n",)),
    "min_words": (lambda a, n: len(a.split()) >= n, ("n",)),
    "exact_bullets": (lambda a, n: _bullets(a) == n, ("n",)),  # lines starting with "- " or "* "
    "include_word": (lambda a, w: _has_word(a, w), ("w",)),  # whole word
    "exclude_word": (lambda a, w: not _has_word(a, w), ("w",)),
    "no_commas": (lambda a: "," not in a, ()),
    "json": (_parses_as_json, ()),  # the whole answer, optionally inside a ``` fence
    "starts_with": (lambda a, s: a.lstrip().lower().startswith(s.lower()), ("s",)),
    "ends_with": (_ends_with, ("s",)),
    "n_paragraphs": (lambda a, n: _paragraphs(a) == n, ("n",)),  # separated by blank lines
    "quote": (lambda a: len(a.strip()) >= 2 and a.strip()[0] in "\"“" and a.strip()[-1] in "\"”", ()),
}


def validate_constraint(constraint: dict[str, Any]) -> None:
    """A clear error for an unknown type or a missing or ill-typed parameter (``n`` a positive int, ``w``/``s`` text)."""
    kind = constraint.get("type") if isinstance(constraint, dict) else None
    if kind not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}: the type must be one of {sorted(CONSTRAINTS)}")
    params = CONSTRAINTS[kind][1]
    extra = set(constraint) - {"type", *params}
    if extra:
        raise ValueError(f"constraint {constraint!r}: unknown parameter(s) {sorted(extra)}")
    for name in params:
        value = constraint.get(name)
        ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0) if name == "n" else (
            isinstance(value, str) and value.strip() != "")
        if not ok:
            raise ValueError(f"constraint {constraint!r}: {name!r} must be a " + (
                "positive integer" if name == "n" else "non-empty string"))


def check_constraint(answer: str, constraint: dict[str, Any]) -> bool:
    """Whether ``answer`` follows ``constraint`` (e.g. ``{"type": "max_words", "n": 30}``): a rule, no judge."""
    validate_constraint(constraint)
    rule, params = CONSTRAINTS[constraint["type"]]
    return bool(rule(answer, *(constraint[p] for p in params)))


def instruction_scores(answer: str, constraints: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(strict, loose): 1 when every constraint holds, else 0; and the share of constraints that hold."""
    held = [check_constraint(answer, c) for c in constraints]
    return float(all(held)), sum(held) / len(held)


# ----------------------------------------------------------------------------------------------- facts, leak


def _normalize(text: str) -> str:
    """:func:`normalize_answer` with hyphens as spaces, so "twenty-four" and "twenty four" match."""
    return normalize_answer(text.replace("-", " "))


def fact_score(answer: str, aliases: Sequence[str]) -> float:
    """1 when a normalised alias appears as a whole-word sequence in the normalised answer, else 0.

    "Contains", not exact match: chat models answer in sentences ("The capital of France is Paris."), and an exact
    match would score the chat format rather than the knowledge. Whole words keep "Paris" from matching "Parisian".
    """
    padded = f" {_normalize(answer)} "
    return float(any(f" {a} " in padded for a in map(_normalize, aliases) if a))


def is_leak(answer: str, labels: Sequence[str]) -> bool:
    """Whether the normalised answer is a label, or starts with one as a whole word ("negative." / "spam, because")."""
    text = _normalize(answer)
    return any(text == label or text.startswith(label + " ") for label in map(_normalize, labels) if label)


def leak_rate(answers: Sequence[str], labels: Sequence[str]) -> float:
    """Share of ``answers`` (to general prompts) that are, or start with, one of the tasks' ``labels``."""
    return float(np.mean([is_leak(a, labels) for a in answers])) if answers else 0.0


# ----------------------------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class GeneralSuite:
    instructions: list[dict[str, Any]]  # {"prompt", "constraints"}
    facts: list[dict[str, Any]]  # {"question", "answers"}
    chat: list[str]  # generic chat prompts


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    with open(DATA_DIR / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@lru_cache(maxsize=1)
def _full_suite() -> GeneralSuite:
    instructions = _read_jsonl("instructions.jsonl")
    for item in instructions:
        for constraint in item["constraints"]:
            validate_constraint(constraint)
    chat = [row["prompt"] for row in _read_jsonl("chat_prompts.jsonl")]
    return GeneralSuite(instructions, _read_jsonl("facts.jsonl"), chat)


def suite_prompts() -> set[str]:
    """Every prompt of the whole suite, normalised (:func:`_normalize`): what no training prompt may repeat."""
    suite = _full_suite()
    texts = [i["prompt"] for i in suite.instructions] + [f["question"] for f in suite.facts] + suite.chat
    return {_normalize(t) for t in texts}


def load_suite(limit: Optional[int] = None) -> GeneralSuite:
    """The shipped suite; ``limit`` keeps the first ``limit`` items of each part (tests, quick checks)."""
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    suite = _full_suite()
    return GeneralSuite(suite.instructions[:limit], suite.facts[:limit], suite.chat[:limit])


# ----------------------------------------------------------------------------------------------- the report


@dataclass
class GeneralAbilityReport:
    """Per-example scores of each part, the answers, and (against a reference) the drift from the base.

    ``leak`` covers every answer: instructions, then facts, then chat prompts (of the parts evaluated). A part not
    evaluated is None. ``chat_answer_ids`` are the greedy chat answers' token ids, on which a later model's KL from
    this one's distributions is measured when this report is the reference. ``kl``/``agreement`` are None for a
    report made without a reference (the base's own).
    """

    answers: dict[str, list[str]]
    chat_answer_ids: Optional[list[list[int]]]
    instructions: Optional[list[float]]
    instructions_loose: Optional[list[float]]
    facts: Optional[list[float]]
    leak: list[float]
    chat_template: bool
    labels: list[str] = field(default_factory=list)
    kl: Optional[list[float]] = None
    agreement: Optional[list[float]] = None
    # a reference's own most likely tokens at its chat answers' positions: agreement without the base's distributions
    chat_argmax: Optional[list[list[int]]] = None
    # and a sketch of its distributions there (sketch_distribution, per prompt): KL without them (kl_from_sketch)
    chat_sketch: Optional[dict[str, list]] = None
    # in memory only (not saved): what entered its output head at those positions, per prompt ([positions, hidden]),
    # so that the exact KL of a later model needs the base's head alone, not a second pass of the base (_head_logp)
    chat_head_inputs: Optional[list[torch.Tensor]] = field(default=None, repr=False, compare=False)

    PARTS = ("instructions", "instructions_loose", "facts", "leak", "kl", "agreement")

    def scores(self) -> dict[str, list[float]]:
        """Per-example scores of each part that was measured."""
        return {p: getattr(self, p) for p in self.PARTS if getattr(self, p) is not None}

    def summary(self) -> dict[str, float]:
        """Mean of each measured part (KL in nats per token; the rest are shares in [0, 1])."""
        return {p: float(np.mean(v)) if v else float("nan") for p, v in self.scores().items()}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(dataclasses.replace(self, chat_head_inputs=None))
        del data["chat_head_inputs"]  # tensors of a model in memory: a resumed run passes the base again instead
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneralAbilityReport":
        return cls(**data)  # a reference saved without chat_argmax / chat_sketch: no agreement / KL after merges


@contextlib.contextmanager
def _kept_state(model):
    """Restore ``requires_grad`` and train/eval mode on exit: leaving peft's ``disable_adapter()`` re-enables
    adapter layers, which can make frozen adapters trainable again."""
    grads = {p: p.requires_grad for p in model.parameters()}
    training = model.training
    try:
        yield
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)
        model.train(training)


def _is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextlib.contextmanager
def _last_head_input(model):
    """The input of the model's output head at its last call (``[batch, positions, hidden]``), in a one-item list."""
    captured, head = [], model.get_output_embeddings()
    if head is None:  # nothing captured: the base is passed again
        yield captured
        return

    def keep(module, args):
        captured[:] = [args[0]]

    handle = head.register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def _answer_logp(model, prompts: list[list[int]], answers: list[list[int]], pad: int,
                 head_inputs: Optional[list] = None) -> list[torch.Tensor]:  # fmt: skip
    """Teacher-forced log-distributions at the len(answer) + 1 positions after each prompt: those predicting each
    answer token, and the one after the whole answer (where the answer's end is predicted).

    ``head_inputs``: a list to extend with what entered the output head at those positions, per prompt, when the head
    alone reproduces the model's logits from it (not so for models that rescale or cap their logits after the head);
    else it is left as it was and ``False`` is appended."""
    keep = max(len(a) for a in answers) + 1  # the shared prefix stops inside every prompt: all kept positions are fed
    with _last_head_input(model) if head_inputs is not None else contextlib.nullcontext() as captured:
        out = forward_shared_prefix(model, [p + a for p, a in zip(prompts, answers)], pad, logits_to_keep=keep,
                                    limit=min(len(p) for p in prompts) - 1)[-1]  # fmt: skip
    logp = out.logits.float().log_softmax(-1)
    if head_inputs is not None:  # checked on the first row: a rescaling or cap after the head shows on any
        hidden = captured[0] if captured and captured[0].shape[:2] == out.logits.shape[:2] else None
        if hidden is not None and torch.allclose(model.get_output_embeddings()(hidden[:1]).float(),
                                                 out.logits[:1].float(), rtol=1e-4, atol=1e-4):  # fmt: skip
            head_inputs.extend(hidden[i, keep - len(a) - 1 :].clone() for i, a in enumerate(answers))
        else:
            head_inputs.append(False)
    return [logp[i, keep - len(a) - 1 :] for i, a in enumerate(answers)]


def _head_logp(model, base_model, head_inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The base's log-distributions from what entered its output head (:func:`_answer_logp`'s ``head_inputs``): the
    head of ``base_model``, or of ``model`` with its adapters disabled."""
    with model.disable_adapter() if base_model is None else contextlib.nullcontext():
        head = (model if base_model is None else base_model).get_output_embeddings()
        return [head(hidden).float().log_softmax(-1) for hidden in head_inputs]


SKETCH_KEYS = ("top_ids", "top_logp", "tail_ids", "tail_logp")


def sketch_distribution(logp: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """What is kept of log-distributions ``[positions, vocab]`` to estimate a KL from them later: the
    ``REFERENCE_TOP_K`` most likely tokens and ``REFERENCE_TAIL_SAMPLES`` tokens drawn (with replacement) from the
    distribution restricted to the other tokens, each with its log-probability (5 decimals)."""
    top_logp, top_ids = logp.topk(min(REFERENCE_TOP_K, logp.shape[-1]), dim=-1)
    if top_ids.shape[-1] == logp.shape[-1]:  # the whole distribution is kept: nothing left to sample
        tail_ids = top_ids[:, :0]
    else:  # a floor keeps every row drawable; a row without mass left gets weight 0 in kl_from_sketch anyway
        weights = (logp.float().exp().cpu() + 1e-30).scatter(-1, top_ids.cpu(), 0.0)
        tail_ids = torch.multinomial(weights, REFERENCE_TAIL_SAMPLES, replacement=True, generator=generator).to(logp.device)
    tail_logp = logp.gather(-1, tail_ids)
    return {"top_ids": top_ids, "top_logp": top_logp.float().round(decimals=5), "tail_ids": tail_ids,
            "tail_logp": tail_logp.float().round(decimals=5)}  # fmt: skip


def kl_from_sketch(sketch: dict[str, torch.Tensor], logp: torch.Tensor) -> torch.Tensor:
    """Per position, KL(base || model) from a sketch of the base's distributions (:func:`sketch_distribution`) and
    the model's full log-distributions ``[positions, vocab]``: exact over the base's top tokens, plus their left-over
    mass times the mean log-ratio over the tokens drawn from the rest, an unbiased estimate of the rest's part."""
    top_logp, tail_logp = sketch["top_logp"].double(), sketch["tail_logp"].double()
    top = (top_logp.exp() * (top_logp - logp.gather(-1, sketch["top_ids"]).double())).sum(-1)
    if tail_logp.shape[-1] == 0:
        return top
    rest = (1 - top_logp.exp().sum(-1)).clamp(min=0)
    return top + rest * (tail_logp - logp.gather(-1, sketch["tail_ids"]).double()).mean(-1)


def _chat_reference(model, prompts, answers, pad: int, batch_size: int):
    """What the base's report keeps of its distributions at the positions :func:`_answer_logp` scores, per prompt:
    the most likely token, a sketch of the distribution (the same draws for the same model and answers), and (in
    memory, None where the head does not reproduce the logits) what entered the output head there."""
    argmax, sketches, generator = [], {key: [] for key in SKETCH_KEYS}, torch.Generator().manual_seed(0)
    head_inputs = []
    for rows in _batches(len(prompts), batch_size):
        for lp in _answer_logp(model, [prompts[i] for i in rows], [answers[i] for i in rows], pad, head_inputs):
            argmax.append(lp.argmax(-1).tolist())
            for key, value in sketch_distribution(lp, generator).items():
                sketches[key].append(value.tolist())
    return argmax, sketches, None if any(h is False for h in head_inputs) else head_inputs


def _chat_drift(model, base_model, prompts, answers, pad: int, batch_size: int,
                head_inputs: Optional[list[torch.Tensor]] = None) -> tuple[list[float], list[float]]:  # fmt: skip
    """Per prompt: mean per-token KL(base || model) on the base's answers (exact: full distributions), and token
    agreement (share of positions where both models' most likely token is the same). The base's own: 0 and 1.

    The base's distributions come from its output head on ``head_inputs`` (its report's, :func:`_chat_reference`)
    where given: a head costs a fraction of a pass of the whole base over prompts and answers."""
    kl, agreement = [], []
    for rows in _batches(len(prompts), batch_size):
        batch_prompts, batch_answers = [prompts[i] for i in rows], [answers[i] for i in rows]
        tuned = _answer_logp(model, batch_prompts, batch_answers, pad)
        if head_inputs is not None:
            base = _head_logp(model, base_model, [head_inputs[i] for i in rows])
        elif base_model is None:
            with model.disable_adapter():
                base = _answer_logp(model, batch_prompts, batch_answers, pad)
        else:
            base = _answer_logp(base_model, batch_prompts, batch_answers, pad)
        for b, t in zip(base, tuned):
            t = t.to(b.device)
            kl.append(float((b.exp() * (b - t)).sum(-1).mean().clamp(min=0)))
            agreement.append(float((b.argmax(-1) == t.argmax(-1)).float().mean()))
    return kl, agreement


def _chat_drift_from_report(model, prompts, reference: GeneralAbilityReport, pad: int, batch_size: int):
    """:func:`_chat_drift` once the base is gone: agreement with the base's kept most likely tokens (exact), and the KL
    from the sketch of its distributions (:func:`kl_from_sketch`; None for a report that kept none)."""
    answers, kl, agreement = reference.chat_answer_ids, [], []
    for rows in _batches(len(prompts), batch_size):
        for i, tuned in zip(rows, _answer_logp(model, [prompts[i] for i in rows], [answers[i] for i in rows], pad)):
            agreement.append(float(np.mean(np.equal(tuned.argmax(-1).tolist(), reference.chat_argmax[i]))))
            if reference.chat_sketch is not None:
                sketch = {key: torch.tensor(reference.chat_sketch[key][i], device=tuned.device,
                                            dtype=torch.long if key.endswith("_ids") else torch.float32)
                          for key in SKETCH_KEYS}  # fmt: skip
                kl.append(float(kl_from_sketch(sketch, tuned).mean().clamp(min=0)))
    return kl or None, agreement


def chat_prompt_task(name: str = "general") -> ContinualTask:
    """A generation task without instruction: its prompt is the user's request alone (the chat template's single
    user turn, or the reference prompt), as the suite asks and as general self-rehearsal replays."""
    return ContinualTask(name=name, train=None, eval=[{"prompt": "-", "completion": "-"}], kind=GENERATION)


def _encode_prompts(tokenizer, texts: Sequence[str], chat: bool) -> tuple[list[list[int]], list[int]]:
    """Prompt ids the package's way, and stops."""
    encoder = PromptEncoder(tokenizer, MAX_PROMPT_TOKENS, chat)
    task = chat_prompt_task()
    return [encoder.prompt(task, {"prompt": t, "context": ""})[1] for t in texts], encoder.stop_ids()


@torch.no_grad()
def evaluate_general_ability(
    model,
    tokenizer,
    *,
    reference: Optional[GeneralAbilityReport] = None,
    labels: Sequence[str] = (),
    max_new_tokens: int = 64,
    short_answer_tokens: int = 24,
    leak_answer_tokens: Optional[int] = None,
    batch_size: int = 8,
    limit: Optional[int] = None,
    chat_template: str = "auto",
    base_model=None,
    parts: Sequence[str] = SUITE_PARTS,
    measure_drift: bool = True,
) -> GeneralAbilityReport:
    """Score ``model`` (its current adapters) on the built-in suite by greedy, batched generation.

    ``batch_size``: prompts per teacher-forced pass of the chat part; answers are generated in batches of at least
    ``SHORT_ANSWER_BATCH``.

    ``parts``: which of ``SUITE_PARTS`` to run. Budgets: ``max_new_tokens`` for the instructions (whose constraints
    need whole answers) and the reference's chat answers; ``short_answer_tokens`` for the facts (short answers);
    ``leak_answer_tokens`` (default: ``short_answer_tokens``) for a tuned model's chat answers, which only the leak
    check reads, and it reads their start.

    ``reference``: the base model's report (:func:`base_reference`), evaluated with the same ``limit``, ``parts`` and
    ``chat_template``; with it, the chat part measures drift from the base on the base's answers (unless
    ``measure_drift=False``: after adapters were merged into the base, its distributions are gone; token agreement is
    taken against the base's most likely tokens and KL estimated from the sketch of its distributions
    (:func:`kl_from_sketch`), which its report keeps). The base's
    distributions come from ``model`` with its adapters disabled when it is a ``PeftModel`` (the caller must not
    have merged adapters into the base), else from ``base_model``. ``labels``: the trained tasks' labels, for the
    leak check. Leaving ``disable_adapter()`` can re-enable frozen adapters: ``requires_grad`` and train/eval mode
    are restored here, but callers inside training should still re-assert their adapter state (the trainer's
    ``restore_adapter_state()``).
    """
    chat = use_chat_template(tokenizer, chat_template)
    suite = load_suite(limit)
    unknown = set(parts) - set(SUITE_PARTS)
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty selection of {SUITE_PARTS}, got {list(parts)!r}")
    if reference is not None:
        measured = [p for p in SUITE_PARTS if p in reference.answers]
        chat_ids = reference.chat_answer_ids or []
        if measured != [p for p in SUITE_PARTS if p in parts] or len(chat_ids) != len(suite.chat) * ("chat" in parts) \
                or reference.chat_template != chat:  # fmt: skip
            raise ValueError(
                f"the reference was evaluated on parts {measured} ({len(chat_ids)} chat prompts) with chat template "
                f"{reference.chat_template}; this evaluation has parts {list(parts)} ({len(suite.chat)} chat prompts) "
                f"with {chat}: use the same limit, parts and chat_template"
            )
        if measure_drift and base_model is None and not _is_peft(model):
            raise ValueError("drift from a reference needs the base's distributions: pass a PeftModel (its adapters "
                             "disabled are the base) or base_model=")  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = {"instructions": [i["prompt"] for i in suite.instructions], "facts": [f["question"] for f in suite.facts],
             "chat": suite.chat}  # fmt: skip
    texts = {part: part_texts for part, part_texts in texts.items() if part in parts}
    budgets = {"instructions": max_new_tokens, "facts": short_answer_tokens,
               "chat": max_new_tokens if reference is None else leak_answer_tokens or short_answer_tokens}  # fmt: skip
    with _kept_state(model):
        model.eval()
        answers, prompt_ids, answer_ids = {}, {}, {}
        for part, part_texts in texts.items():
            prompts, stops = _encode_prompts(tokenizer, part_texts, chat)
            config = greedy_config(pad_token_id=pad, stop_ids=stops, max_new_tokens=budgets[part])
            prompt_ids[part], answer_ids[part] = prompts, []
            for rows in _batches(len(prompts), max(batch_size, SHORT_ANSWER_BATCH)):
                batch = PromptBatch.prefill(model, [prompts[i] for i in rows], pad, whole=False)
                answer_ids[part] += generate_batch(model, batch, config)
            answers[part] = [a.strip() for a in tokenizer.batch_decode(answer_ids[part], skip_special_tokens=True)]
        kl = agreement = chat_argmax = sketch = head_inputs = None
        if reference is None and "chat" in texts:  # kept, for agreement and KL once the base is gone (merged)
            chat_argmax, sketch, head_inputs = _chat_reference(model, prompt_ids["chat"], answer_ids["chat"], pad,
                                                               batch_size)  # fmt: skip
        elif reference is not None and measure_drift and "chat" in texts:
            kl, agreement = _chat_drift(model, base_model, prompt_ids["chat"], reference.chat_answer_ids, pad, batch_size,
                                        reference.chat_head_inputs)  # fmt: skip
        elif reference is not None and "chat" in texts and reference.chat_argmax is not None:
            kl, agreement = _chat_drift_from_report(model, prompt_ids["chat"], reference, pad, batch_size)
    strict = loose = None
    if "instructions" in texts:
        strict, loose = map(list, zip(*(instruction_scores(a, item["constraints"])
                                        for a, item in zip(answers["instructions"], suite.instructions))))  # fmt: skip
    return GeneralAbilityReport(
        answers=answers, chat_answer_ids=answer_ids.get("chat") if reference is None else None,
        instructions=strict, instructions_loose=loose,
        facts=[fact_score(a, f["answers"]) for a, f in zip(answers["facts"], suite.facts)] if "facts" in texts else None,
        leak=[float(is_leak(a, labels)) for part in texts for a in answers[part]], chat_template=chat,
        labels=list(labels), kl=kl, agreement=agreement, chat_argmax=chat_argmax, chat_sketch=sketch,
        chat_head_inputs=head_inputs,
    )  # fmt: skip


def base_reference(peft_model, tokenizer, **kw) -> GeneralAbilityReport:
    """The base model's report (``peft_model`` with its adapters disabled): the ``reference`` of later evaluations.

    ``requires_grad`` and train/eval mode are restored afterwards; callers inside training must still re-assert
    which adapters are active and trainable (the trainer's ``restore_adapter_state()``). Not for a run that merged
    adapters into the base: what ``disable_adapter()`` leaves then is trained.
    """
    if not _is_peft(peft_model):
        raise ValueError("base_reference needs a PeftModel (the base is the model with its adapters disabled); "
                         "evaluate a plain base model with evaluate_general_ability(model, tokenizer)")  # fmt: skip
    with _kept_state(peft_model), peft_model.disable_adapter():
        return evaluate_general_ability(peft_model, tokenizer, **kw)


def drift(report: GeneralAbilityReport, reference: GeneralAbilityReport, *, confidence: float = 0.95,
          num_resamples: int = 2000, seed: int = 0) -> dict[str, Difference]:  # fmt: skip
    """Model minus base per part, paired over items, with a percentile bootstrap interval over items.

    The base's leak is recomputed from its answers with ``report``'s labels (the base never saw the tasks); its KL
    from itself is 0 and its agreement with itself 1, so those rows are the report's KL and agreement - 1.
    """
    base_answers = [a for part in SUITE_PARTS for a in reference.answers.get(part, [])]
    base = {"instructions": reference.instructions, "instructions_loose": reference.instructions_loose,
            "facts": reference.facts, "leak": [float(is_leak(a, report.labels)) for a in base_answers]}  # fmt: skip
    base = {part: scores for part, scores in base.items() if scores is not None}
    if report.kl is not None:
        base["kl"], base["agreement"] = [0.0] * len(report.kl), [1.0] * len(report.agreement)
    out = {}
    for part, base_scores in base.items():
        if len(getattr(report, part)) != len(base_scores):
            raise ValueError(f"part {part!r}: the report and its reference score different items (use the same limit)")
        out[part] = paired_item_difference(getattr(report, part), base_scores, confidence=confidence,
                                           num_resamples=num_resamples, seed=seed)  # fmt: skip
    return out
