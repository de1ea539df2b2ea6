"""Bad input to the trainer and methods: a clear error before any training, naming the problem."""

import pytest
from peft import IA3Config, get_peft_model

from conftest import synthetic_task, tiny_model, training_args
from peft_continual import ContinualTrainer, NLoraConfig


def peft_model(tokenizer, config):
    model, targets = tiny_model("qwen2", tokenizer)  # k/v projections are non-square (32 -> 16)
    config.target_modules = set(targets)
    return get_peft_model(model, config)


def trained_nothing(tmp_path):
    return not list(tmp_path.glob("out/task_*"))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(processing_class=None), ValueError, "needs the tokenizer"),
        (dict(evaluation_method="vote"), ValueError, "'rank' or 'generate'"),
        (dict(max_source_length=0), ValueError, "max_source_length must be positive"),
    ],
)
def test_bad_trainer_arguments(kwargs, error, message, tokenizer, tmp_path):
    options = {"processing_class": tokenizer, **kwargs}
    with pytest.raises(error, match=message):
        ContinualTrainer(model=peft_model(tokenizer, NLoraConfig(r=4)), args=training_args(tmp_path), **options)


def test_tokenizer_without_eos(tokenizer, tmp_path):
    broken = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>")
    with pytest.raises(ValueError, match="no eos_token"):
        ContinualTrainer(model=peft_model(tokenizer, NLoraConfig(r=4)), args=training_args(tmp_path), processing_class=broken)


def test_non_lora_peft_method(tokenizer, tmp_path):
    model, _ = tiny_model("llama", tokenizer)
    model = get_peft_model(model, IA3Config(target_modules=["q_proj", "v_proj"], feedforward_modules=[]))
    with pytest.raises(TypeError, match="needs a LoRA-based config"):
        ContinualTrainer(model=model, args=training_args(tmp_path), processing_class=tokenizer)


def test_rank_product_on_non_square_modules_fails_before_training(tokenizer, tmp_path):
    trainer = ContinualTrainer(model=peft_model(tokenizer, NLoraConfig(r=4, collision_form="rank_product")),
                               args=training_args(tmp_path), processing_class=tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match=r"needs square modules.*k_proj maps 32 -> 16"):
        trainer.train_continual([synthetic_task("colors")])
    assert trained_nothing(tmp_path)


def test_too_few_per_task_lambdas_fail_before_training(tokenizer, tmp_path):
    trainer = ContinualTrainer(model=peft_model(tokenizer, NLoraConfig(r=4, collision_lambda=[0.1, 0.2])),
                               args=training_args(tmp_path), processing_class=tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match="lists 2 values but task 3"):
        trainer.train_continual([synthetic_task(n) for n in ("colors", "animals", "fruits")])
    assert trained_nothing(tmp_path)


def test_prompt_longer_than_max_length_fails_before_training(tokenizer, tmp_path):
    trainer = ContinualTrainer(model=peft_model(tokenizer, NLoraConfig(r=4)), args=training_args(tmp_path),
                               processing_class=tokenizer, max_source_length=8)  # fmt: skip
    with pytest.raises(ValueError, match="leaves no room for the text"):
        trainer.train_continual([synthetic_task("colors")])
    assert trained_nothing(tmp_path)
