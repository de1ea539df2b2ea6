"""Tiny models built from configs, a tokenizer trained on the spot, and synthetic tasks: no network at all."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import datasets
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    TrainingArguments,
)

from peft_continual import ContinualTask

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets.disable_progress_bars()
torch.set_num_threads(1)  # tiny models gain nothing from threads, and spinning threads stall on a busy 2-core machine
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cl_benchmark"

# Each synthetic task: the label is decided by which keyword the text contains.
TASK_WORDS = {
    "colors": {"warm": ["red", "orange", "yellow"], "cold": ["blue", "green", "purple"]},
    "animals": {"pet": ["cat", "dog", "hamster"], "wild": ["wolf", "tiger", "bear"]},
    "fruits": {"sweet": ["mango", "banana", "grape"], "sour": ["lemon", "lime", "cherry"]},
}
FILLER = "the a some very quite one two on in under over near big small old new".split()


def synthetic_rows(task: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    labels = sorted(TASK_WORDS[task])
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.sample(FILLER, 1) + [rng.choice(TASK_WORDS[task][label])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def synthetic_task(name: str, n_train: int = 16, n_eval: int = 8, seed: int = 0) -> ContinualTask:
    return ContinualTask(
        name=name,
        train=datasets.Dataset.from_list(synthetic_rows(name, n_train, seed)),
        eval=datasets.Dataset.from_list(synthetic_rows(name, n_eval, seed + 1000)),
        labels=sorted(TASK_WORDS[name]),
        instruction="Which kind? Choose one from the option.\n",
        task_type="TC",
    )


def make_tokenizer():
    corpus = [w for words in TASK_WORDS.values() for group in words.values() for w in group] + FILLER
    corpus += ["Task:TC Dataset:colors Option: Answer: Which kind? Choose one from the option.", "warm cold pet wild sweet sour"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def memorised_task(name: str, n: int = 12) -> ContinualTask:
    """A task evaluated on its own training rows: a tiny model learns it fast, and forgetting is visible."""
    task = synthetic_task(name, n_train=n)
    task.eval = task.train
    return task


# Generation tasks: a short exact answer (the opposite of a word) and a rewriting one (repeat words reversed).
OPPOSITES = {"hot": "cold", "big": "small", "old": "new", "up": "down", "fast": "slow", "wet": "dry", "near": "far", "open": "shut"}


def generation_rows(task: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if task == "opposites":
            word = sorted(OPPOSITES)[i % len(OPPOSITES)]
            rows.append({"prompt": f"opposite of {word}", "completion": OPPOSITES[word]})
        else:
            words = rng.sample(FILLER, 3)
            rows.append({"prompt": "reverse: " + " ".join(words), "completion": " ".join(reversed(words))})
    return rows


def generation_task(name: str, n_train: int = 16, n_eval: int = 8, seed: int = 0, metric=None) -> ContinualTask:
    return ContinualTask(
        name=name, kind="generation", metric=metric,
        train=datasets.Dataset.from_list(generation_rows(name, n_train, seed)),
        eval=datasets.Dataset.from_list(generation_rows(name, n_eval, seed + 1000)),
    )  # fmt: skip


# ChatML, as SmolLM2 and Qwen write it.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_chat_tokenizer():
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer():
    return make_chat_tokenizer()


def _llama(vocab):
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.2,
    ))  # fmt: skip


def _qwen2(vocab):
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
    ))  # fmt: skip


def _gpt2(vocab):
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2))


ARCHITECTURES = {
    "llama": (_llama, ["q_proj", "v_proj"]),
    "qwen2": (_qwen2, ["q_proj", "k_proj", "v_proj"]),  # GQA: k/v map 32 -> 16 (non-square)
    "gpt2": (_gpt2, ["c_attn"]),  # Conv1D (fan_in_fan_out)
}


def tiny_model(arch: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    build, targets = ARCHITECTURES[arch]
    model = build(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, targets


def training_args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=8,
        num_train_epochs=1, learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True, lr_scheduler_type="constant",
    )  # fmt: skip
    values.update(overrides)
    return TrainingArguments(**values)


IDS = torch.tensor([[5, 9, 14, 3, 7, 2]])  # a fixed input on which saved and trained models are compared


def train(tokenizer, tmp_path, config, arch="llama", names=("colors", "animals"), epochs=2):
    """A short continual run of ``config`` on synthetic tasks (the trainer, for saving and exporting tests)."""
    from peft import get_peft_model

    from peft_continual import ContinualTrainer

    model, targets = tiny_model(arch, tokenizer)
    config.target_modules = config.target_modules or set(targets)
    trainer = ContinualTrainer(
        model=get_peft_model(model, config), processing_class=tokenizer, max_source_length=64,
        args=training_args(tmp_path, num_train_epochs=epochs, learning_rate=1e-2),
    )  # fmt: skip
    trainer.train_continual([synthetic_task(n, n_train=8) for n in names])
    return trainer


def continual_logits(trainer):
    """Logits of the trained continual model (the method's evaluation adapters) on ``IDS``."""
    from peft_continual.adapters import adapters_active

    model = trainer.peft_model.eval()
    with torch.no_grad(), adapters_active(model, trainer.method.eval_adapters()):
        return model(input_ids=IDS).logits


class Counting(torch.nn.Module):
    """Stands for the DDP/FSDP/DeepSpeed wrapper Trainer hands to compute_loss: counts the forwards through it."""

    def __init__(self, model):
        super().__init__()
        self.module, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)
