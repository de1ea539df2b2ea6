"""On a real bitsandbytes 4-bit base (needs a CUDA GPU and bitsandbytes; skipped elsewhere): merging is refused,
and the exported root adapter equals the trained continual model. On CPU, test_export.py checks the refusal with a
stand-in for the packed weights."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from conftest import synthetic_task, tiny_model, training_args
from peft_continual import ContinualTrainer, IncLoraConfig, NLoraConfig
from peft_continual.adapters import adapters_active

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes 4-bit needs a CUDA GPU")
IDS = torch.tensor([[5, 9, 14, 3, 7, 2]])


def quantized_base(tokenizer, folder):
    if not folder.exists():
        tiny_model("llama", tokenizer)[0].save_pretrained(folder)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, device_map={"": 0})


def trainer_on_4bit(tokenizer, tmp_path, config):
    config.target_modules = {"q_proj", "v_proj"}
    return ContinualTrainer(model=get_peft_model(quantized_base(tokenizer, tmp_path / "base"), config),
                            processing_class=tokenizer, args=training_args(tmp_path, use_cpu=False), max_source_length=64)  # fmt: skip


def test_merging_into_a_4bit_base_is_refused(tokenizer, tmp_path):
    trainer = trainer_on_4bit(tokenizer, tmp_path, IncLoraConfig(r=4, merge_finished_adapters=True))
    with pytest.raises(ValueError, match="quantized base weights .*Linear4bit"):
        trainer.train_continual([synthetic_task("colors", n_train=8)])
    assert trainer.state.global_step == 0


def test_root_adapter_on_a_4bit_base_equals_the_trained_model(tokenizer, tmp_path):
    trainer = trainer_on_4bit(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8, use_rslora=True, collision_lambda=1.0))
    trainer.train_continual([synthetic_task(n, n_train=8) for n in ("colors", "animals")])
    model = trainer.peft_model.eval()
    with torch.no_grad(), adapters_active(model, trainer.method.eval_adapters()):
        expected = model(input_ids=IDS.cuda()).logits
    folder = trainer.save_continual(tmp_path / "final")
    plain = PeftModel.from_pretrained(quantized_base(tokenizer, tmp_path / "base"), str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS.cuda()).logits, expected, rtol=1e-4, atol=1e-4)
