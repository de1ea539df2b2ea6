"""Scoring: the shared-prompt label ranking equals a naive full-sequence computation; exact-match normalisation."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import synthetic_task, tiny_model, training_args
from peft_continual import ContinualTrainer, evaluate_task, normalize_answer
from peft_continual.evaluation import PromptBatch, rank_batch


def naive_scores(model, prompts, options):
    """Run prompt + option as one sequence per pair (no padding, no cache) and sum the option's log-probs."""
    scores = torch.zeros(len(prompts), len(options))
    for i, p in enumerate(prompts):
        for k, o in enumerate(options):
            ids = torch.tensor([p + o])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            scores[i, k] = sum(logp[len(p) - 1 + t, tok] for t, tok in enumerate(o))
    return scores


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("whole", [True, False], ids=["whole-prompt-cached", "last-token-fed-with-options"])
def test_shared_prompt_ranking_equals_naive(arch, whole, tokenizer):
    """Both ways a prompt batch is cached (ranking alone, or shared with generation) rank as the naive loop does."""
    model, _ = tiny_model(arch, tokenizer)
    model.eval()
    cases = [([[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]], [[20, 21, 1], [22, 1], [23, 24, 25, 1]]),  # left padding
             ([[13], [14]], [[20, 21, 1], [22, 1]]),  # one-token prompts: nothing cached before the last token
             ([[3, 4, 5], [8, 9]], [[20], [22]]),  # one-token options: nothing fed after the prompt
             ([[3, 4, 5, 6, 7], [3, 4, 9], [3, 4, 5, 12]], [[20, 21, 1], [22, 1]]),  # a shared prefix run once
             ([[3, 4, 5], [3, 4, 5]], [[20, 21, 1], [22, 1]])]  # identical prompts: all but the last token shared  # fmt: skip
    for prompts, options in cases:
        with torch.no_grad():
            fast = rank_batch(model, PromptBatch.prefill(model, prompts, 0, whole=whole), options, pad_token_id=0)
            slow = naive_scores(model, prompts, options)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_both_protocols_from_one_prefill_equal_each_alone(arch, tokenizer, monkeypatch):
    """Scoring under rank and generate at once runs each prompt batch once, and answers exactly as each alone."""
    import peft_continual.evaluation as evaluation

    model, targets = tiny_model(arch, tokenizer)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    model.eval()  # a random LoRA update: the adapter's path is part of what the shared cache must carry
    task = synthetic_task("colors", n_eval=11)  # batches of 4: the last one is short
    kwargs = dict(max_source_length=64, batch_size=4)
    alone = {m: evaluate_task(model, tokenizer, task, method=m, **kwargs) for m in ("rank", "generate")}
    prefills, original = [], evaluation.PromptBatch.prefill
    monkeypatch.setattr(evaluation.PromptBatch, "prefill", lambda *a, **k: prefills.append(1) or original(*a, **k))
    both = evaluation.evaluate_protocols(model, tokenizer, task, ["generate", "rank"], **kwargs)
    assert len(prefills) == 3  # ceil(11 / 4) prompt batches, each run once for both protocols
    for m in ("rank", "generate"):
        assert both[m].method == m and both[m].num_examples == 11
        assert both[m].predictions == alone[m].predictions and both[m].example_scores == alone[m].example_scores
    assert any(both["generate"].predictions)  # something was generated to compare


def test_normalize_answer():
    assert normalize_answer("  The Science, or Technology!\nmore") == "the science or technology more"
    assert normalize_answer("very negative.") == normalize_answer("Very Negative")
    assert normalize_answer("an apple") == "an apple"


@pytest.mark.parametrize("method", ["rank", "generate"])
def test_trained_model_is_scored_correct(method, tokenizer, tmp_path):
    """After training on a task, both scorings find the answers (evaluated on the memorised training rows)."""
    model, _ = tiny_model("llama", tokenizer)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    task = synthetic_task("colors", n_train=8)
    task.eval = task.train
    trainer = ContinualTrainer(model=model, args=training_args(tmp_path, num_train_epochs=20, learning_rate=1e-2),
                               processing_class=tokenizer, max_source_length=64)  # fmt: skip
    untrained = evaluate_task(model, tokenizer, task, method=method, max_source_length=64).accuracy
    trainer.train_continual([task])
    model.eval()
    out = evaluate_task(model, tokenizer, task, method=method, max_source_length=64)
    assert out.accuracy == 1.0 and out.num_examples == 8, (untrained, out.predictions)
    if method == "generate":
        assert all(normalize_answer(p) in {"warm", "cold"} for p in out.predictions)


def test_unknown_evaluation_method(tokenizer):
    model, _ = tiny_model("llama", tokenizer)
    with pytest.raises(ValueError, match="'rank' or 'generate'"):
        evaluate_task(model, tokenizer, synthetic_task("colors"), method="vote")


def test_shared_prefix_length():
    """The batch's common first tokens, leaving each sequence one of its own; none for a single sequence."""
    from peft_continual.evaluation import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical: all but the last token
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]], limit=1) == 1
    assert shared_prefix_length([[1], [1, 2]]) == 0 and shared_prefix_length([[7, 8], [9, 8]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0
