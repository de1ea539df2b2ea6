"""The built-in general-ability suite: its rules against hand-written answers, its data, and its evaluation on tiny
models (no downloads)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import tiny_model
from peft import LoraConfig, get_peft_model

from peft_continual import evaluate_general_ability, general_ability
from peft_continual.general_ability import (
    CONSTRAINTS,
    DATA_DIR,
    GeneralAbilityReport,
    _encode_prompts,
    base_reference,
    check_constraint,
    kl_from_sketch,
    sketch_distribution,
    drift,
    fact_score,
    instruction_scores,
    leak_rate,
    load_suite,
)

# (constraint, answers that follow it, answers that do not)
CASES = [
    ({"type": "lowercase"}, ["a quiet morning, soft rain.", "ok 42"], ["A quiet morning.", "42 !"]),
    ({"type": "uppercase"}, ["A QUIET MORNING.", "OK 42"], ["A quiet morning.", ""]),
    ({"type": "max_words", "n": 3}, ["one two three", "one,two"], ["one two three four"]),
    ({"type": "min_words", "n": 3}, ["one two three", "a b c d"], ["one two", ""]),
    ({"type": "exact_bullets", "n": 2}, ["Ideas:\n- one\n* two", "  - a\n  - b"], ["- one", "- a\n- b\n- c", "-a\n-b"]),
    ({"type": "include_word", "w": "calm"}, ["It is CALM today.", "calm"], ["It is calmer.", "becalmed seas"]),
    ({"type": "exclude_word", "w": "rain"}, ["A rainy day.", "sunny"], ["Rain again.", "the rain."]),
    ({"type": "no_commas"}, ["no commas here."], ["one, two"]),
    ({"type": "json"}, ['{"title": "a", "text": "b"}', '```json\n{"a": 1}\n```', "```\n[1, 2]\n```"],
     ["title: a", '{"a": 1} and more', "```json\n{bad}\n```"]),
    ({"type": "starts_with", "s": "Sure"}, ["Sure, here it is.", "  SURE thing"], ["Of course. Sure.", "Sur"]),
    ({"type": "ends_with", "s": "Thank you"}, ["That is all. Thank you.", "THANK YOU!", "thank you"],
     ["Thank you, friend.", "Thanks"]),
    ({"type": "n_paragraphs", "n": 2}, ["First part.\n\nSecond part.", "One.\n  \nTwo.\n"], ["One.\nTwo.", "A.\n\nB.\n\nC."]),
    ({"type": "quote"}, ['"A quoted answer."', "“Curly quotes.”"], ['"Half quoted.', "No quotes", '"']),
]


@pytest.mark.parametrize("constraint,good,bad", CASES, ids=[c[0]["type"] for c in CASES])
def test_constraint_rules(constraint, good, bad):
    assert all(check_constraint(a, constraint) for a in good)
    assert not any(check_constraint(a, constraint) for a in bad)


def test_every_constraint_type_is_tested():
    assert {c[0]["type"] for c in CASES} == set(CONSTRAINTS)


@pytest.mark.parametrize("constraint", [{"type": "shouting"}, {"type": "max_words"}, {"type": "max_words", "n": 0},
                                        {"type": "include_word", "w": ""}, {"type": "lowercase", "n": 2}, "lowercase"])
def test_bad_constraint_specs(constraint):
    with pytest.raises(ValueError):
        check_constraint("answer", constraint)


def test_instruction_scores_strict_and_loose():
    constraints = [{"type": "lowercase"}, {"type": "max_words", "n": 3}, {"type": "no_commas"}]
    assert instruction_scores("a b c", constraints) == (1.0, 1.0)
    assert instruction_scores("A b, c d", constraints) == (0.0, 0.0)
    assert instruction_scores("a b c d", constraints) == (0.0, pytest.approx(2 / 3))


def test_fact_matching():
    assert fact_score("It is Paris.", ["Paris"]) == 1.0
    assert fact_score("paris", ["Paris"]) == 1.0
    assert fact_score("A Parisian city.", ["Paris"]) == 0.0
    assert fact_score("I live in the USA.", ["United States", "USA"]) == 1.0
    assert fact_score("The United States of America.", ["United States", "USA"]) == 1.0
    assert fact_score("Buenos Aires, of course", ["Buenos Aires"]) == 1.0
    assert fact_score("Aires Buenos", ["Buenos Aires"]) == 0.0
    assert fact_score("There are twenty four hours.", ["24", "twenty-four"]) == 1.0
    assert fact_score("1,000 grams", ["1000"]) == 1.0
    assert fact_score("No idea.", ["Paris"]) == 0.0


def test_leak_rate():
    labels = ["negative", "spam", "world news"]
    answers = ["Negative.", "spam, because it sells", "World news", "The answer is negative.", "spammy text", "hello"]
    assert leak_rate(answers, labels) == pytest.approx(3 / 6)
    assert leak_rate(answers, []) == 0.0
    assert leak_rate([], labels) == 0.0


def test_data_files():
    suite = load_suite()
    lines = {name: (DATA_DIR / name).read_text(encoding="utf-8").splitlines()
             for name in ("instructions.jsonl", "facts.jsonl", "chat_prompts.jsonl")}  # fmt: skip
    assert all(len(rows) >= 200 for rows in lines.values())
    assert (len(suite.instructions), len(suite.facts), len(suite.chat)) == tuple(len(r) for r in lines.values())
    texts = {"instructions": [i["prompt"] for i in suite.instructions], "facts": [f["question"] for f in suite.facts],
             "chat": suite.chat}  # fmt: skip
    for part, part_texts in texts.items():
        assert len(set(part_texts)) == len(part_texts), f"duplicate prompts in {part}"
        assert all(isinstance(t, str) and t.strip() for t in part_texts)
    sets = [set(t) for t in texts.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    for item in suite.instructions:
        assert 1 <= len(item["constraints"]) <= 2
        for constraint in item["constraints"]:
            check_constraint("", constraint)  # a valid spec
    for fact in suite.facts:
        assert fact["answers"] and all(isinstance(a, str) and a.strip() for a in fact["answers"])
    assert (DATA_DIR / "SOURCE.md").read_text().count("Apache-2.0")
    assert [len(p) for p in (load_suite(3).instructions, load_suite(3).facts, load_suite(3).chat)] == [3, 3, 3]


@pytest.mark.parametrize("chat", [False, True])
def test_evaluate_with_and_without_chat_template(tokenizer, chat_tokenizer, chat):
    tok = chat_tokenizer if chat else tokenizer
    model, _ = tiny_model("llama", tok)
    report = evaluate_general_ability(model, tok, limit=3, max_new_tokens=6, labels=["warm"])
    assert report.chat_template is chat
    assert [len(report.instructions), len(report.instructions_loose), len(report.facts), len(report.leak)] == [3, 3, 3, 9]
    assert {part: len(a) for part, a in report.answers.items()} == {"instructions": 3, "facts": 3, "chat": 3}
    assert len(report.chat_answer_ids) == 3 and all(len(ids) <= 6 for ids in report.chat_answer_ids)
    assert report.kl is None and report.agreement is None
    assert set(report.summary()) == {"instructions", "instructions_loose", "facts", "leak"}
    prompts, _ = _encode_prompts(tok, load_suite(3).chat, chat)
    if chat:
        assert tok.decode(prompts[0]).startswith("<|im_start|>user\n")


def test_drift_against_itself_is_zero(tokenizer):
    """A plain model against itself as the base (base_model=), and a PeftModel at init against its base."""
    model, targets = tiny_model("llama", tokenizer)
    reference = evaluate_general_ability(model, tokenizer, limit=3, max_new_tokens=6)
    report = evaluate_general_ability(model, tokenizer, limit=3, max_new_tokens=6, reference=reference, base_model=model)
    assert report.kl == pytest.approx([0.0] * 3, abs=1e-6) and report.agreement == [1.0] * 3
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))  # lora_B = 0: the base itself
    reference = base_reference(peft_model, tokenizer, limit=3, max_new_tokens=6)
    report = evaluate_general_ability(peft_model, tokenizer, limit=3, max_new_tokens=6, reference=reference)
    assert report.kl == pytest.approx([0.0] * 3, abs=1e-6) and report.agreement == [1.0] * 3
    differences = drift(report, reference)
    assert all(d.estimate == 0 and not d.significant for d in differences.values())
    with pytest.raises(ValueError, match="same limit"):
        evaluate_general_ability(peft_model, tokenizer, limit=2, max_new_tokens=6, reference=reference)
    with pytest.raises(ValueError, match="base_model="):
        evaluate_general_ability(model, tokenizer, limit=3, max_new_tokens=6, reference=reference)


@torch.no_grad()
def test_perturbed_adapter_drifts_from_its_base(chat_tokenizer):
    tok = chat_tokenizer
    model, targets = tiny_model("llama", tok)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    reference = base_reference(peft_model, tok, limit=3, max_new_tokens=6)
    assert all(p.requires_grad == ("lora_" in n) for n, p in peft_model.named_parameters())  # adapter state kept
    assert peft_model.training
    perturb_adapter(peft_model)
    report = evaluate_general_ability(peft_model, tok, limit=3, max_new_tokens=6, reference=reference, batch_size=2)
    assert min(report.kl) > 0
    assert_naive_drift(peft_model, tok, reference, report)
    assert drift(report, reference)["kl"].estimate == pytest.approx(sum(report.kl) / 3)


def perturb_adapter(peft_model):
    """A seeded random LoRA update (lora_B starts at 0, the base itself): a tuned model that drifts from its base."""
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.normal_(std=0.5)


def assert_naive_drift(peft_model, tok, reference, report):
    """Independent check: each prompt alone, no padding, both models run whole; KL over the base answer's tokens and
    the position after it, and token agreement (the share of those positions where both models' top token is the
    same)."""
    prompts, _ = _encode_prompts(tok, load_suite(len(report.kl)).chat, True)
    peft_model.eval()
    for prompt, answer, kl, agreement in zip(prompts, reference.chat_answer_ids, report.kl, report.agreement):
        ids = torch.tensor([prompt + answer])
        tuned = peft_model(input_ids=ids).logits[0, len(prompt) - 1 :].log_softmax(-1)
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits[0, len(prompt) - 1 :].log_softmax(-1)
        assert kl == pytest.approx(float((base.exp() * (base - tuned)).sum(-1).mean()), rel=1e-4, abs=1e-6)
        assert agreement == pytest.approx(float((base.argmax(-1) == tuned.argmax(-1)).float().mean()))


def _capped_gemma2(vocab):
    """Gemma 2 caps its logits after the output head (tanh): the head alone does not give its distributions."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    return Gemma2ForCausalLM(Gemma2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, final_logit_softcapping=1.0,
        initializer_range=0.2,
    ))  # fmt: skip


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "gemma2-capped"])
def test_base_distributions_from_its_head_inputs_or_a_second_pass(chat_tokenizer, arch):
    """The base's report keeps what entered its output head at its answers, so that a later KL needs the head alone;
    where the head does not give the logits (a cap after it), the base is run again. Both equal the naive KL, and
    the kept tensors are not saved."""
    tok = chat_tokenizer
    model, targets = tiny_model("llama", tok) if arch == "llama" else (_capped_gemma2(len(tok)), ["q_proj", "v_proj"])
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    reference = base_reference(peft_model, tok, limit=4, max_new_tokens=6, batch_size=3)  # a short last batch
    assert (reference.chat_head_inputs is not None) == (arch == "llama")
    if reference.chat_head_inputs is not None:
        assert [h.shape[0] for h in reference.chat_head_inputs] == [len(a) + 1 for a in reference.chat_answer_ids]
    assert "chat_head_inputs" not in reference.to_dict() and json.dumps(reference.to_dict())
    perturb_adapter(peft_model)
    report = evaluate_general_ability(peft_model, tok, limit=4, max_new_tokens=6, reference=reference, batch_size=3)
    assert min(report.kl) > 0
    assert_naive_drift(peft_model, tok, reference, report)
    passed_again = dataclasses.replace(reference, chat_head_inputs=None)
    again = evaluate_general_ability(peft_model, tok, limit=4, max_new_tokens=6, reference=passed_again, batch_size=3)
    assert again.kl == pytest.approx(report.kl, rel=1e-5, abs=1e-7) and again.agreement == report.agreement


def test_parts_and_budgets(chat_tokenizer, monkeypatch):
    """Only the parts asked for are run; facts and leak answers get their own short budgets (the quick form)."""
    model, targets = tiny_model("llama", chat_tokenizer)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    quick = dict(limit=4, parts=("facts", "chat"), max_new_tokens=10, short_answer_tokens=5, leak_answer_tokens=2)
    reference = base_reference(peft_model, chat_tokenizer, **quick)
    assert set(reference.answers) == {"facts", "chat"} and reference.instructions is None
    assert max(map(len, reference.chat_answer_ids)) <= 10  # the reference's chat answers: max_new_tokens
    budgets = []
    original = general_ability.greedy_config
    monkeypatch.setattr(general_ability, "greedy_config", lambda **kw: budgets.append(kw["max_new_tokens"]) or original(**kw))
    report = evaluate_general_ability(peft_model, chat_tokenizer, reference=reference, **quick)
    assert set(report.scores()) == {"facts", "leak", "kl", "agreement"} and len(report.leak) == 8
    assert budgets == [5, 2]  # facts, then the tuned model's chat answers (read by the leak check only)
    with pytest.raises(ValueError, match="use the same limit, parts and chat_template"):
        evaluate_general_ability(peft_model, chat_tokenizer, reference=reference, limit=4, parts=("facts",))
    with pytest.raises(ValueError, match="parts must be a non-empty selection"):
        evaluate_general_ability(peft_model, chat_tokenizer, parts=("trivia",))


def test_report_round_trips_through_json(tokenizer):
    model, targets = tiny_model("llama", tokenizer)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    reference = base_reference(peft_model, tokenizer, limit=2, max_new_tokens=4)
    report = evaluate_general_ability(peft_model, tokenizer, limit=2, max_new_tokens=4, reference=reference, labels=["a"])
    for r in (reference, report):
        assert GeneralAbilityReport.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def _sketch(logp: torch.Tensor, k: int, samples: int, seed: int = 0, monkeypatch=None) -> dict[str, torch.Tensor]:
    monkeypatch.setattr(general_ability, "REFERENCE_TOP_K", k)
    monkeypatch.setattr(general_ability, "REFERENCE_TAIL_SAMPLES", samples)
    return sketch_distribution(logp, torch.Generator().manual_seed(seed))


def test_kl_from_a_sketch_against_hand_computed_cases_and_the_exact_kl(monkeypatch):
    # base (0.7, 0.2, 0.1), model (0.1, 0.3, 0.6); kept: token 0 (top 1), then tail draws of tokens 1 and 2
    base, model = torch.tensor([[0.7, 0.2, 0.1]]).log(), torch.tensor([[0.1, 0.3, 0.6]]).log()
    sketch = {"top_ids": torch.tensor([[0]]), "top_logp": base[:, :1], "tail_ids": torch.tensor([[1, 2]]),
              "tail_logp": base[:, 1:]}  # fmt: skip
    expected = 0.7 * math.log(0.7 / 0.1) + 0.3 * (math.log(0.2 / 0.3) + math.log(0.1 / 0.6)) / 2
    assert float(kl_from_sketch(sketch, model)) == pytest.approx(expected, rel=1e-5)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 50, generator=generator).log_softmax(-1)  # flat enough for the tail to hold most mass
    model = torch.randn(4, 50, generator=generator).log_softmax(-1)
    exact = (base.exp() * (base - model)).sum(-1).double()
    whole = _sketch(base, 50, 20, monkeypatch=monkeypatch)  # the whole distribution kept: exact, no draws
    assert whole["tail_ids"].shape == (4, 0) and torch.allclose(kl_from_sketch(whole, model), exact, atol=1e-4)
    # the tail's part is unbiased: many draws, or the mean over seeds of few, come to the exact KL
    many = kl_from_sketch(_sketch(base, 5, 20000, monkeypatch=monkeypatch), model)
    assert torch.allclose(many, exact, rtol=0.02)
    few = torch.stack([kl_from_sketch(_sketch(base, 5, 20, seed, monkeypatch), model) for seed in range(300)]).mean(0)
    assert torch.allclose(few, exact, rtol=0.03)
    # the top tokens alone (no tail) would miss it: the tail's part is real here, so the checks above are not vacuous
    top_only = kl_from_sketch({**_sketch(base, 5, 20, monkeypatch=monkeypatch), "tail_ids": torch.zeros(4, 0, dtype=torch.long),
                               "tail_logp": torch.zeros(4, 0)}, model)  # fmt: skip
    assert not torch.allclose(top_only, exact, rtol=0.1)
    assert torch.allclose(kl_from_sketch(_sketch(base, 5, 20, monkeypatch=monkeypatch), base), torch.zeros(4).double(), atol=1e-4)


def test_agreement_and_kl_without_the_base_against_the_live_base(tokenizer, monkeypatch):
    """After a merge the base's distributions are gone; its report keeps its most likely tokens, so agreement taken
    against them equals agreement against the live base, and a sketch of its distributions, from which the KL comes
    close to the exact one, and equal to it when the sketch keeps the whole vocabulary."""
    from peft_continual.adapters import adapter_parameters

    model, targets = tiny_model("llama", tokenizer)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    options = dict(limit=4, max_new_tokens=6, parts=("chat",))
    base = base_reference(peft_model, tokenizer, **options)
    assert len(base.chat_argmax) == 4 and [len(a) for a in base.chat_argmax] == [len(a) + 1 for a in base.chat_answer_ids]
    assert [len(p[0]) for p in base.chat_sketch["top_ids"]] == [general_ability.REFERENCE_TOP_K] * 4
    assert [len(p[0]) for p in base.chat_sketch["tail_ids"]] == [general_ability.REFERENCE_TAIL_SAMPLES] * 4
    assert base_reference(peft_model, tokenizer, **options).chat_sketch == base.chat_sketch  # the same draws
    monkeypatch.setattr(general_ability, "REFERENCE_TOP_K", model.config.vocab_size)
    whole = base_reference(peft_model, tokenizer, **options)  # the base's whole distributions kept
    with torch.no_grad():
        for p in adapter_parameters(peft_model, "default"):
            p.normal_(0, 0.5)
    live = evaluate_general_ability(peft_model, tokenizer, reference=base, **options)
    kept = evaluate_general_ability(peft_model, tokenizer, reference=base, measure_drift=False, **options)
    assert kept.agreement == live.agreement and min(live.agreement) < 1.0
    assert sum(kept.kl) == pytest.approx(sum(live.kl), rel=0.2) and kept.kl != live.kl
    from_whole = evaluate_general_ability(peft_model, tokenizer, reference=whole, measure_drift=False, **options)
    assert from_whole.kl == pytest.approx(live.kl, abs=1e-4)  # the kept log-probabilities are rounded to 5 decimals
    assert GeneralAbilityReport.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    saved_before = {k: v for k, v in base.to_dict().items() if k != "chat_sketch"}
    older = evaluate_general_ability(peft_model, tokenizer, reference=GeneralAbilityReport.from_dict(saved_before),
                                     measure_drift=False, **options)  # fmt: skip
    assert older.kl is None and older.agreement == live.agreement  # a reference saved without a sketch
