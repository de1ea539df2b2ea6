"""lm-eval tasks on the in-memory model, offline, on local YAML tasks; and the same score as lm-eval's own
``--model hf --model_args pretrained=BASE,peft=ADAPTER`` path on the saved adapter."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from peft_continual.lm_eval_bridge import lm_eval_scores  # noqa: E402

from conftest import make_tokenizer, tiny_model  # noqa: E402

TASKS_DIR = Path(__file__).parent / "data" / "lm_eval_tasks"


@pytest.fixture(autouse=True)
def offline_in_tasks_dir(monkeypatch):
    """lm-eval hands ``data_files`` to ``datasets.load_dataset``, which resolves relative paths against the working
    directory (not the YAML's folder): run where the shipped YAMLs' JSONL files are."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(TASKS_DIR)


def test_local_tasks_score_the_model_and_leave_it_as_it_was():
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None  # lm-eval sets one on the tokenizer it gets: not on the caller's
    model, _ = tiny_model("llama", tokenizer)
    model.train()
    model.model.layers[0].eval()  # a mixed state, restored module by module
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state(), random.getstate()

    scores = lm_eval_scores(model, tokenizer, ["pc_colors", "pc_opposites"], include_path=TASKS_DIR)

    colors, opposites = scores["pc_colors"], scores["pc_opposites"]
    assert 0.0 <= colors["metrics"]["acc,none"] <= 1.0
    assert "acc_stderr,none" in colors["metrics"] and "acc_norm,none" in colors["metrics"]
    assert colors["doc_ids"] == list(range(16))
    assert len(colors["per_example"]["acc,none"]) == 16
    assert sum(colors["per_example"]["acc,none"]) / 16 == pytest.approx(colors["metrics"]["acc,none"])
    assert colors["higher_is_better"] == {"acc": True, "acc_norm": True}
    assert len(opposites["per_example"]["exact_match,none"]) == 8
    assert 0.0 <= opposites["metrics"]["exact_match,none"] <= 1.0
    assert [m.training for m in model.modules()] == modes
    assert tokenizer.pad_token is None
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]


def fit(peft_model, tokenizer, steps=30):
    """A few steps on the task's own answers, so that the adapter moves the scores away from the base's."""
    rows = [json.loads(line) for line in (TASKS_DIR / "pc_colors.jsonl").read_text().splitlines()]
    prompts = [f"Which kind? {r['text']}\nAnswer:" for r in rows]
    batch = tokenizer([f"{p} {r['label']}" for p, r in zip(prompts, rows)], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for i, prompt in enumerate(prompts):
        labels[i, : len(tokenizer(prompt)["input_ids"])] = -100
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(steps):
        peft_model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_peft_model_in_memory_matches_lm_eval_on_the_saved_adapter(tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    model.save_pretrained(tmp_path / "base")  # before peft injects its layers into the base
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    fit(peft_model, tokenizer)
    peft_model.save_pretrained(tmp_path / "adapter")

    ours = lm_eval_scores(peft_model, tokenizer, ["pc_colors"], include_path=TASKS_DIR, limit=12)["pc_colors"]
    with peft_model.disable_adapter():
        base = lm_eval_scores(peft_model, tokenizer, ["pc_colors"], include_path=TASKS_DIR, limit=12)["pc_colors"]
    # lm-eval's CLI path: `lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --include_path DIR`.
    # Its built-in tasks are left out of this index only to save seconds: they do not change a local task's score.
    reloaded = simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path}/base,peft={tmp_path}/adapter,tokenizer={tmp_path}/tokenizer",
        tasks=["pc_colors"], task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        device="cpu", batch_size=8, limit=12,
    )  # fmt: skip
    theirs = reloaded["results"]["pc_colors"]

    assert len(ours["per_example"]["acc,none"]) == 12
    assert ours["per_example"] != base["per_example"]  # the adapter is in the scores, not only the base
    assert ours["metrics"]["acc,none"] == theirs["acc,none"]
    assert ours["metrics"]["acc_norm,none"] == theirs["acc_norm,none"]
    by_doc = sorted(reloaded["samples"]["pc_colors"], key=lambda sample: sample["doc_id"])
    assert ours["per_example"]["acc,none"] == [sample["acc"] for sample in by_doc]


@pytest.fixture
def no_model_work(monkeypatch):
    """Bad input must fail before lm-eval wraps the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was wrapped before the input was checked")

    monkeypatch.setattr(HFLM, "__init__", refuse)


def test_unknown_task_lists_close_matches(tokenizer, no_model_work):
    model, _ = tiny_model("llama", tokenizer)
    with pytest.raises(ValueError, match=r"'pc_colours' \(did you mean: pc_colors"):
        lm_eval_scores(model, tokenizer, ["pc_colours"], include_path=TASKS_DIR)
    with pytest.raises(ValueError, match="at least one"):
        lm_eval_scores(model, tokenizer, [], include_path=TASKS_DIR)


def test_missing_include_path(tokenizer, tmp_path, no_model_work):
    model, _ = tiny_model("llama", tokenizer)
    with pytest.raises(FileNotFoundError, match="include path not found: .*nowhere"):
        lm_eval_scores(model, tokenizer, ["pc_colors"], include_path=tmp_path / "nowhere")


def test_lm_eval_not_installed_names_the_extra(tokenizer, monkeypatch):
    model, _ = tiny_model("llama", tokenizer)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"pip install 'peft_continual\[lm_eval\]'"):
        lm_eval_scores(model, tokenizer, ["pc_colors"], include_path=TASKS_DIR)
