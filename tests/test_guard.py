"""A continual config is never trained as plain LoRA by a trainer that does not know it."""

import pytest
from peft import LoraConfig, get_peft_model
from transformers import Trainer

from conftest import memorised_task, tiny_model, training_args
from peft_continual import ContinualTrainer, ILoraConfig, NLoraConfig
from peft_continual.guard import ContinualConfigGuard, continual_adapters
from peft_continual.tasks import tokenize_task


def plain_trainer(tokenizer, tmp_path, config):
    from peft_continual import ContinualCollator

    model, targets = tiny_model("llama", tokenizer)
    config.target_modules = set(targets)
    features = tokenize_task(tokenizer, memorised_task("colors", 8), 64)
    return Trainer(model=get_peft_model(model, config), args=training_args(tmp_path), train_dataset=features,
                   data_collator=ContinualCollator(tokenizer.pad_token_id))  # fmt: skip


@pytest.mark.parametrize("config", [NLoraConfig(r=4, lora_alpha=8), ILoraConfig(r=4, lora_alpha=8)], ids=["nlora", "ilora"])
def test_a_plain_trainer_refuses_a_continual_config_before_the_first_step(config, tokenizer, tmp_path):
    trainer = plain_trainer(tokenizer, tmp_path, config)
    with pytest.raises(RuntimeError, match=rf"has a {type(config).__name__}.*plain LoRA.*ContinualTrainer.*ContinualSFTTrainer"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_plain_lora_in_a_plain_trainer_is_left_alone(tokenizer, tmp_path):
    trainer = plain_trainer(tokenizer, tmp_path, LoraConfig(r=4, lora_alpha=8))
    assert trainer.train().global_step > 0


def test_the_continual_trainer_carries_no_guard(tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    peft_model = get_peft_model(model, NLoraConfig(r=4, lora_alpha=8, target_modules=set(targets)))
    assert continual_adapters(peft_model) == {"default": "NLoraConfig"}
    trainer = ContinualTrainer(model=peft_model, args=training_args(tmp_path), processing_class=tokenizer,
                               max_source_length=64)  # fmt: skip
    assert not [c for c in trainer.callback_handler.callbacks if isinstance(c, ContinualConfigGuard)]
    trainer.train_continual([memorised_task("colors", 8)])
