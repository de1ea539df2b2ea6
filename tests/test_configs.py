"""Configs: validation, get_peft_model, save/load round trips with our classes and with plain peft."""

import warnings

import pytest
from peft import LoraConfig, PeftModel, get_peft_model

from conftest import tiny_model
from peft_continual import ILoraConfig, IncLoraConfig, NLoraConfig, OLoraConfig, ReplayConfig


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: NLoraConfig(collision_lambda=-1.0), "collision_lambda must be >= 0"),
        (lambda: NLoraConfig(collision_lambda=[]), "non-empty list"),
        (lambda: NLoraConfig(collision_form="ab"), "collision_form must be"),
        (lambda: NLoraConfig(collision_reduction="max"), "collision_reduction must be"),
        (lambda: OLoraConfig(orthogonal_lambda=-0.1), "orthogonal_lambda must be >= 0"),
        (lambda: OLoraConfig(orthogonal_form="cube"), "orthogonal_form must be"),
        (lambda: ReplayConfig(replay_buffer_size=0), "nothing to replay"),
        (lambda: ILoraConfig(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
        (lambda: ILoraConfig(consistency_layers="middle"), "consistency_layers must be"),
        (lambda: ILoraConfig(consistency_target="min"), "consistency_target must be"),
        (lambda: ILoraConfig(eval_learner="both"), "eval_learner must be"),
        (lambda: IncLoraConfig(use_dora=True), "does not support use_dora"),
        (lambda: NLoraConfig(modules_to_save=["lm_head"]), "does not support modules_to_save"),
    ],
)
def test_invalid_configs_are_refused_with_a_clear_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_lambda_per_task():
    cfg = NLoraConfig(collision_lambda=[0.1, 0.2])
    assert cfg.lambda_for_task(1) == 0.2
    with pytest.raises(ValueError, match="one value per task"):
        cfg.lambda_for_task(2)


@pytest.mark.parametrize(
    "config",
    [
        NLoraConfig(r=4, collision_lambda=[0.5, 0.25], collision_form="rank_product", merge_finished_adapters=True),
        OLoraConfig(r=4, orthogonal_lambda=0.3, orthogonal_form="squared", l2_lambda=0.01),
        ILoraConfig(r=4, ema_decay=0.9, consistency_layers=[1, 2], consistency_target="max", eval_learner="fast"),
    ],
)
def test_save_load_round_trip_keeps_our_class_and_plain_peft_still_loads(config, tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    config.target_modules = targets
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(tmp_path)
    loaded = type(config).from_pretrained(str(tmp_path))
    assert type(loaded) is type(config)
    for name in ("collision_lambda", "collision_form", "orthogonal_form", "l2_lambda", "ema_decay", "consistency_layers",
                 "consistency_target", "eval_learner", "merge_finished_adapters"):  # fmt: skip
        assert getattr(loaded, name, None) == getattr(config, name, None)
    base, _ = tiny_model("llama", tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plain peft warns about the extra fields and ignores them
        assert type(LoraConfig.from_pretrained(str(tmp_path))) is LoraConfig
        plain = PeftModel.from_pretrained(base, str(tmp_path))
    sd_a = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    sd_b = {k: v for k, v in plain.state_dict().items() if "lora_" in k}
    assert sd_a.keys() == sd_b.keys() and all((sd_a[k] == sd_b[k]).all() for k in sd_a)


def test_to_lora_config_drops_only_our_fields():
    plain = NLoraConfig(r=16, lora_alpha=32, target_modules=["q_proj"], collision_lambda=2.0).to_lora_config()
    assert type(plain) is LoraConfig and plain.r == 16 and plain.lora_alpha == 32 and plain.target_modules == {"q_proj"}
