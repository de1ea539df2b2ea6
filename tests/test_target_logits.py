"""The LM head on target positions only gives the full-logits loss and gradients, and really shrinks the head."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import ARCHITECTURES, memorised_task, tiny_model, training_args
from peft_continual import ContinualTrainer, ILoraConfig, NLoraConfig, ReplayConfig
from peft_continual.target_logits import supports_target_logits, target_positions, with_target_logits
from peft_continual.tasks import IGNORE_INDEX


def random_batch(vocab: int, seed: int = 0):
    """Rows of different lengths (right-padded) whose targets sit at different positions, as the collator makes."""
    g = torch.Generator().manual_seed(seed)
    B, L = 4, 12
    ids = torch.randint(2, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX)
    for row, (length, answer) in enumerate([(12, 3), (9, 2), (7, 1), (10, 4)]):
        mask[row, length:] = 0
        ids[row, length:] = 0
        labels[row, length - answer : length] = ids[row, length - answer : length]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_target_positions_by_hand():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, -100, -100, -100, 7]])
    # position t predicts token t+1: targets at 2, 3 (row 0) and 4 (row 1) are predicted from 1, 2 and 3
    assert target_positions(labels).tolist() == [1, 2, 3]
    kept = with_target_logits({"labels": labels})
    assert kept["shift_labels"].tolist() == [[5, 6, -100], [-100, -100, 7]]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("num_items", [None, 23])
def test_loss_and_gradients_equal_the_full_logits_path(arch, num_items, tokenizer):
    model, targets = tiny_model(arch, tokenizer)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                                             fan_in_fan_out=arch == "gpt2"))  # fmt: skip
    assert supports_target_logits(model)
    model.eval()  # no dropout (GPT-2 has some): the two forwards must see the same network; gradients still flow
    batch = random_batch(len(tokenizer))
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    results = []
    for inputs in (batch, with_target_logits(batch)):
        model.zero_grad()
        loss = model(**inputs, **extra).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.detach(), grads))
    (full_loss, full_grads), (kept_loss, kept_grads) = results
    torch.testing.assert_close(kept_loss, full_loss, rtol=1e-6, atol=1e-7)
    for a, b in zip(kept_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_trainer_runs_the_head_on_target_positions_only(tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    trainer = ContinualTrainer(model=model, args=training_args(tmp_path), processing_class=tokenizer)
    assert trainer.logits_on_targets_only
    seen = []
    head = model.get_base_model().lm_head
    handle = head.register_forward_hook(lambda mod, args, out: seen.append((args[0].shape[1], mod.training)))
    try:
        trainer.train_continual([memorised_task("colors", 8)])
    finally:
        handle.remove()
    training_widths = [width for width, training in seen if training]
    assert training_widths and max(training_widths) <= 3  # the answer (a label and EOS), not the ~20-token prompt


def test_models_with_their_own_loss_keep_full_logits(tokenizer):
    model, _ = tiny_model("llama", tokenizer)
    model.loss_type = "ForMaskedLM"
    assert not supports_target_logits(model)
    model.loss_type = "ForCausalLM"
    model._loss_function = lambda *a, **k: None
    assert not supports_target_logits(model)


@pytest.mark.parametrize(
    "config",
    [LoraConfig(r=4, lora_alpha=8), NLoraConfig(r=4, lora_alpha=8, collision_lambda=5.0, collision_reduction="sum"),
     ReplayConfig(r=4, lora_alpha=8, replay_buffer_size=6), ILoraConfig(r=4, lora_alpha=8, replay_buffer_size=6,
                                                                        consistency_weight=5.0, ema_decay=0.5)],
    ids=["seqlora", "nlora", "replay", "ilora"],
)  # fmt: skip
def test_training_with_and_without_target_logits_is_identical(config, tokenizer, tmp_path):
    """Same weights after two tasks with gradient accumulation (Trainer's num_items_in_batch normalisation)."""
    finals = []
    for on in (True, False):
        model, targets = tiny_model("llama", tokenizer)
        cfg = copy.deepcopy(config)
        cfg.target_modules = set(targets)
        trainer = ContinualTrainer(
            model=get_peft_model(model, cfg), processing_class=tokenizer, logits_on_targets_only=on,
            args=training_args(tmp_path / str(on), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                               num_train_epochs=2, learning_rate=1e-2),
        )  # fmt: skip
        assert trainer.logits_on_targets_only is on
        trainer.train_continual([memorised_task("colors", 8), memorised_task("animals", 8)])
        finals.append([p.detach().clone() for n, p in trainer.peft_model.named_parameters() if "lora_" in n])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
