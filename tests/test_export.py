"""The root adapter against the trained model for every option a user can set; merges and inits that would break it."""

import warnings

import pytest
import torch
from peft import LoftQConfig, LoraConfig, PeftModel, PeftModelForCausalLM, get_peft_model

from conftest import IDS, continual_logits, synthetic_task, tiny_model, train, training_args
from peft_continual import ContinualTrainer, IncLoraConfig, ILoraConfig, NLoraConfig, OLoraConfig, ReplayConfig
from peft_continual.adapters import half_precision_merge_loss, lora_layers, merge_into_base
from peft_continual.persistence import save_root_adapter


def load_plain(tokenizer, folder, arch="llama"):
    base, _ = tiny_model(arch, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the root config is plain and complete: plain peft is silent
        return PeftModel.from_pretrained(base, str(folder)).eval()


RSLORA = dict(r=4, lora_alpha=8, use_rslora=True)
CASES = {
    "seqlora-rslora": ("llama", LoraConfig(**RSLORA)),
    "seqlora-dora": ("llama", LoraConfig(r=4, lora_alpha=8, use_dora=True)),
    "seqlora-modules_to_save": ("llama", LoraConfig(r=4, lora_alpha=8, modules_to_save=["lm_head"])),
    "replay-rslora": ("llama", ReplayConfig(**RSLORA)),
    "ilora-rslora": ("llama", ILoraConfig(**RSLORA, ema_decay=0.5)),
    "inclora-rslora": ("llama", IncLoraConfig(**RSLORA)),
    "nlora-rslora": ("llama", NLoraConfig(**RSLORA, collision_lambda=1.0)),
    "olora-rank_pattern": ("llama", OLoraConfig(r=4, lora_alpha=8, rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 32})),
    "inclora-merged-prefix": ("llama", IncLoraConfig(r=4, lora_alpha=8, use_rslora=True, merge_finished_adapters=True)),
    "nlora-gpt2-conv1d": ("gpt2", NLoraConfig(r=4, lora_alpha=8, collision_lambda=1.0, fan_in_fan_out=True)),
    "nlora-all-linear": ("qwen2", NLoraConfig(r=4, lora_alpha=16, target_modules="all-linear", collision_lambda=1.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_root_adapter_equals_the_trained_model(case, tokenizer, tmp_path):
    arch, config = CASES[case]
    names = ("colors", "animals", "fruits") if "merged" in case else ("colors", "animals")
    trainer = train(tokenizer, tmp_path, config, arch=arch, names=names)
    if "merged" in case:
        assert trainer.method.merged == ["task_1_colors", "task_2_animals", "task_3_fruits"]  # the trained base moved
    expected = continual_logits(trainer)
    folder = trainer.save_continual(tmp_path / "final")
    plain = load_plain(tokenizer, folder, arch)
    assert isinstance(plain, PeftModelForCausalLM)  # task_type is recorded, so plain peft builds the causal LM class
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)


def test_root_of_adapters_with_different_rank_alpha_and_scaling(tokenizer, tmp_path):
    """Rank concatenation folds each adapter's own scaling: plain, rsLoRA and per-module patterns mixed."""
    model, _ = tiny_model("llama", tokenizer)
    configs = {
        "a": LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        "b": LoraConfig(r=5, lora_alpha=7, use_rslora=True, target_modules=["q_proj"], init_lora_weights=False),
        "c": LoraConfig(r=3, lora_alpha=4, target_modules=["v_proj"], rank_pattern={"layers.1.self_attn.v_proj": 1},
                        alpha_pattern={"layers.0.self_attn.v_proj": 40}, init_lora_weights=False),
    }  # fmt: skip
    peft_model = get_peft_model(model, configs["a"], adapter_name="a")
    for name in ("b", "c"):
        peft_model.add_adapter(name, configs[name])
    peft_model.base_model.set_adapter(["a", "b", "c"])
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=IDS).logits
    save_root_adapter(peft_model, ["a", "b", "c"], tmp_path / "root")
    plain = load_plain(tokenizer, tmp_path / "root")
    ranks = {name: layer.lora_A["default"].weight.shape[0] for name, layer in lora_layers(plain)}
    assert ranks["base_model.model.model.layers.0.self_attn.q_proj"] == 7 and ranks["base_model.model.model.layers.1.self_attn.v_proj"] == 3
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "config,option",
    [(NLoraConfig(r=4, lora_bias=True), "lora_bias"), (IncLoraConfig(r=4, bias="lora_only"), "bias='lora_only'"),
     (OLoraConfig(r=4, init_lora_weights="mica"), "LoRA variant")],
    ids=["lora_bias", "bias", "variant"],
)  # fmt: skip
def test_task_adapters_without_an_exact_export_are_refused_before_training(config, option, tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    config.target_modules = set(targets)
    trainer = ContinualTrainer(model=get_peft_model(model, config), processing_class=tokenizer,
                               args=training_args(tmp_path), max_source_length=64)  # fmt: skip
    with pytest.raises(ValueError, match=option.replace("(", r"\(").replace(")", r"\)")):
        trainer.train_continual([synthetic_task("colors", n_train=8)])
    assert trainer.state.global_step == 0 and not trainer.result.accuracy_matrix


# ------------------------------------------------------------------------------------------------- merging


class PackedWeight(torch.nn.Module):
    """Stands in for a bitsandbytes Linear4bit: uint8 packed storage (the real class needs a GPU)."""

    def __init__(self, linear):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(linear.weight.numel() // 2, 1, dtype=torch.uint8), requires_grad=False)


def test_merge_into_a_quantized_base_is_refused(tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    config = IncLoraConfig(r=4, target_modules=set(targets), merge_finished_adapters=True)
    peft_model = get_peft_model(model, config)
    trainer = ContinualTrainer(model=peft_model, processing_class=tokenizer, args=training_args(tmp_path), max_source_length=64)
    name, layer = next(lora_layers(peft_model))
    layer.base_layer = PackedWeight(layer.base_layer)  # what peft's bnb dispatch would have wrapped
    with pytest.raises(ValueError, match="quantized base weights .*PackedWeight.*merge_finished_adapters=False"):
        trainer.train_continual([synthetic_task("colors", n_train=8)])
    assert trainer.state.global_step == 0
    with pytest.raises(ValueError, match="quantized"):  # and the merge itself refuses, whoever calls it
        merge_into_base(peft_model, "default")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merge_into_a_half_precision_base_is_refused_with_the_measured_loss(dtype, tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    model.to(dtype)
    peft_model = get_peft_model(model, NLoraConfig(r=4, target_modules=set(targets), merge_finished_adapters=True))
    trainer = ContinualTrainer(model=peft_model, processing_class=tokenizer, args=training_args(tmp_path), max_source_length=64)
    weight = next(lora_layers(peft_model))[1].get_base_layer().weight
    loss = half_precision_merge_loss(weight)
    errors = []  # independent: each weight plus or minus 1e-4, rounded to the dtype one value at a time
    for i, w in enumerate(weight.detach().reshape(-1)[: 2**16].tolist()):
        d = 1e-4 if i % 2 == 0 else -1e-4
        stored = torch.tensor(w + d, dtype=torch.float64).to(dtype).item() - w
        errors.append(abs(stored - d) / 1e-4)
    assert loss == pytest.approx(sum(errors) / len(errors), rel=1e-3)
    assert loss > 0.05  # a real share of a small update is rounded away
    with pytest.raises(ValueError, match=rf"{100 * loss:.0f}% of an update of size 1e-4 is lost.*float32"):
        trainer.train_continual([synthetic_task("colors", n_train=8)])
    assert trainer.state.global_step == 0


def test_half_precision_merge_loss_is_zero_in_float32():
    assert half_precision_merge_loss(torch.full((64,), 0.02)) < 1e-3


# ------------------------------------------------------------------------------------------------- initialisations

REWRITING_INITS = ["pissa", "pissa_niter_4", "olora", "corda", "loftq", "eva", "lora_ga"]


@pytest.mark.parametrize("init", REWRITING_INITS)
def test_initialisations_that_rewrite_the_base_are_refused(init, tokenizer, tmp_path):
    extra = {"loftq_config": LoftQConfig()} if init == "loftq" else {}
    with pytest.raises(ValueError, match=f"init_lora_weights='{init}' rewrites the base"):
        NLoraConfig(r=4, init_lora_weights=init, **extra)
    # a plain LoraConfig (SeqLoRA) is refused by the trainer, before any training
    model, targets = tiny_model("llama", tokenizer)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=set(targets)))
    peft_model.peft_config["default"].init_lora_weights = init
    with pytest.raises(ValueError, match=f"init_lora_weights='{init}' rewrites the base"):
        ContinualTrainer(model=peft_model, processing_class=tokenizer, args=training_args(tmp_path))
