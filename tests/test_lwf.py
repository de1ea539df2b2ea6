"""LwF: the distillation maths against a naive computation, its config, and the method on tiny models."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from conftest import IDS, Counting, continual_logits, synthetic_task, tiny_model, train, training_args
from peft_continual import ContinualCollator, ContinualTrainer, LwfConfig
from peft_continual.adapters import adapter_parameters
from peft_continual.distillation import distillation_kl, distillation_positions
from peft_continual.methods import LwfMethod
from peft_continual.tasks import IGNORE_INDEX, tokenize_task


def naive_kl(student, teacher, mask, temperature):
    """Position by position, in float64, with torch.distributions."""
    values = []
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                p = torch.distributions.Categorical(logits=teacher[b, t].double() / temperature)
                q = torch.distributions.Categorical(logits=student[b, t].double() / temperature)
                values.append(torch.distributions.kl_divergence(p, q))
    return torch.stack(values).mean() * temperature**2


# ------------------------------------------------------------------------------------------------ maths


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.5])
def test_distillation_kl_matches_a_naive_computation(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 11) * 3, torch.randn(3, 5, 11) * 3
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)
    value = distillation_kl(student, teacher, mask, temperature)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), naive_kl(student, teacher, mask, temperature), rtol=1e-5, atol=1e-6)
    # masked-out positions never count
    student[~mask], teacher[~mask] = 100.0, -100.0
    torch.testing.assert_close(distillation_kl(student, teacher, mask, temperature), value)


def test_half_precision_logits_are_compared_in_float32():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 50) * 4, torch.randn(2, 4, 50) * 4
    mask = torch.ones(2, 4, dtype=torch.bool)
    value = distillation_kl(student.bfloat16(), teacher.bfloat16(), mask)
    exact = naive_kl(student.bfloat16(), teacher.bfloat16(), mask, 1.0)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), exact, rtol=1e-5, atol=1e-6)


def test_distillation_kl_is_zero_for_the_teacher_itself_and_without_positions():
    logits = torch.randn(2, 3, 7)
    assert distillation_kl(logits, logits.clone(), torch.ones(2, 3, dtype=torch.bool), 2.0).item() == 0.0
    student = torch.randn(2, 3, 7, requires_grad=True)
    empty = distillation_kl(student, logits, torch.zeros(2, 3, dtype=torch.bool))
    empty.backward()  # still on the graph: a batch without positions trains like any other
    assert empty.item() == 0.0 and torch.equal(student.grad, torch.zeros_like(student))
    with pytest.raises(ValueError, match="leading shape"):
        distillation_kl(student, logits, torch.ones(2, 4, dtype=torch.bool))


def test_gradient_reaches_the_student_only_and_only_at_masked_positions():
    student = torch.randn(2, 3, 7, requires_grad=True)
    teacher = torch.randn(2, 3, 7, requires_grad=True)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    distillation_kl(student, teacher, mask, 2.0).backward()
    assert teacher.grad is None
    assert (student.grad[mask].abs().sum(-1) > 0).all() and (student.grad[~mask] == 0).all()


def test_distillation_positions_prompt_targets_and_all():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX], [IGNORE_INDEX, 5, 6, IGNORE_INDEX, IGNORE_INDEX]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    keep, mask = distillation_positions(labels, attention, "targets")
    assert keep.tolist() == [0, 1, 2] and mask.tolist() == [[False, True, True], [True, True, False]]
    keep, mask = distillation_positions(labels, attention, "all")  # padding never predicts nor is predicted
    assert keep.tolist() == [0, 1, 2, 3] and mask.tolist() == [[True, True, True, True], [True, True, False, False]]
    keep, mask = distillation_positions(labels, attention, "prompt")  # real tokens without a label: the prompt's
    assert keep.tolist() == [0, 3] and mask.tolist() == [[True, True], [False, False]]


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"distill_weight": -1.0}, "distill_weight must be a finite number >= 0"),
        ({"distill_weight": float("nan")}, "distill_weight must be a finite number >= 0"),
        ({"distill_temperature": 0.0}, "distill_temperature must be a finite number > 0"),
        ({"distill_positions": "answers"}, "distill_positions must be 'prompt', 'targets' or 'all'"),
        ({"use_dora": True}, "LwfConfig does not support use_dora"),
        ({"init_lora_weights": "pissa"}, "rewrites the base model's weights"),  # the teacher would not be the base
        ({"distill_general_examples": -2}, "distill_general_examples must be an integer >= 0"),
        ({"general_answer_tokens": 0}, "general_answer_tokens must be a positive integer"),
    ],
)
def test_invalid_configs_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LwfConfig(**kwargs)


def test_hyperparameters_and_config_round_trip(tokenizer, tmp_path):
    assert LwfMethod.hyperparameters()[4:] == ["distill_weight", "distill_temperature", "distill_positions",
                                               "distill_general_examples", "general_prompts", "general_answer_tokens"]
    model, targets = tiny_model("llama", tokenizer)
    config = LwfConfig(r=4, target_modules=targets, distill_weight=0.5, distill_temperature=2.0, distill_positions="all")
    get_peft_model(model, config).save_pretrained(tmp_path)
    loaded = LwfConfig.from_pretrained(str(tmp_path))
    assert type(loaded) is LwfConfig
    assert (loaded.distill_weight, loaded.distill_temperature, loaded.distill_positions) == (0.5, 2.0, "all")


# ------------------------------------------------------------------------------------------------ method


def batch_of(tokenizer, task_name="colors", n=4):
    features = tokenize_task(tokenizer, synthetic_task(task_name, n_train=n), 64, False)
    return ContinualCollator(tokenizer.pad_token_id)([features[i] for i in range(n)])


@pytest.mark.parametrize("positions", ["prompt", "targets", "all"])
def test_loss_terms_is_the_kl_to_the_base_and_leaves_the_model_as_it_was(positions, tokenizer, tmp_path):
    model, targets = tiny_model("llama", tokenizer)
    config = LwfConfig(r=4, lora_alpha=8, target_modules=targets, distill_weight=3.0,
                       distill_temperature=2.0, distill_positions=positions)  # fmt: skip
    peft_model = get_peft_model(model, config)
    trainer = ContinualTrainer(model=peft_model, args=training_args(tmp_path), processing_class=tokenizer)
    method = trainer.method
    assert isinstance(method, LwfMethod) and method.head_on_positions
    inputs = batch_of(tokenizer)
    _, terms = method.loss_terms(peft_model, inputs)
    assert terms["loss_distill"].item() == 0.0  # lora_B starts at zero: the student is the base
    with torch.no_grad():
        for p in adapter_parameters(peft_model, "default"):
            p.normal_(0, 0.3)
    peft_model.train()
    grads = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    _, terms = method.loss_terms(peft_model, inputs)
    assert peft_model.training and grads == {n: p.requires_grad for n, p in peft_model.named_parameters()}
    method.head_on_positions = False  # a model without logits_to_keep: full logits, positions picked after the head
    torch.testing.assert_close(method.loss_terms(peft_model, inputs)[1]["loss_distill"], terms["loss_distill"])
    method.head_on_positions = True

    peft_model.eval()  # independent: full logits, the base from a plain forward of the base weights
    with torch.no_grad():
        student = peft_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        with peft_model.disable_adapter():
            teacher = peft_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    peft_model.train()
    method.restore_adapter_state(peft_model)
    real = inputs["attention_mask"].bool()
    answer = torch.zeros_like(real)
    answer[:, :-1] = inputs["labels"][:, 1:] != IGNORE_INDEX
    mask = torch.zeros_like(real)
    mask[:, :-1] = real[:, :-1] & real[:, 1:]
    mask = {"targets": answer, "all": mask, "prompt": mask & ~answer}[positions]
    expected = 3.0 * naive_kl(student, teacher, mask, 2.0)
    torch.testing.assert_close(terms["loss_distill"].double(), expected, rtol=1e-4, atol=1e-6)

    terms["loss_distill"].backward()
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in peft_model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def lwf_and_seqlora(tokenizer, tmp_path_factory):
    """The same two tasks, seed and data, with LwF (a strong pull) and with SeqLoRA."""
    lwf = train(tokenizer, tmp_path_factory.mktemp("lwf"), LwfConfig(r=4, lora_alpha=8, distill_weight=10.0), epochs=3)
    seqlora = train(tokenizer, tmp_path_factory.mktemp("seqlora"), LoraConfig(r=4, lora_alpha=8), epochs=3)
    return lwf, seqlora


def kl_from_base(trainer, tokenizer):
    """KL(base || model) on every real position of both tasks' prompts and answers, with full logits."""
    model = trainer.peft_model.eval()
    values = []
    for name in ("colors", "animals"):
        inputs = batch_of(tokenizer, name, n=8)
        real = inputs["attention_mask"].bool()
        with torch.no_grad():
            tuned = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            with model.disable_adapter():
                base = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        trainer.method.restore_adapter_state(model)
        values.append(naive_kl(tuned, base, real, 1.0))
    return float(sum(values) / len(values))


def test_lwf_stays_closer_to_the_base_than_seqlora(lwf_and_seqlora, tokenizer):
    lwf, seqlora = lwf_and_seqlora
    kl_lwf, kl_seqlora = kl_from_base(lwf, tokenizer), kl_from_base(seqlora, tokenizer)
    assert kl_seqlora > 0.05 and kl_lwf < 0.5 * kl_seqlora, (kl_lwf, kl_seqlora)
    distill = [entry["loss_distill"] for entry in lwf.state.log_history if "loss_distill" in entry]
    assert distill and all(v >= 0 for v in distill)
    trainable = {n for n, p in lwf.peft_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in lwf.peft_model.named_parameters() if "lora_" in n and ".default." in n}


def test_lwf_run_saves_and_continues_from_the_saved_folder(lwf_and_seqlora, tokenizer, tmp_path):
    lwf, _ = lwf_and_seqlora
    folder = lwf.save_continual(tmp_path / "final")
    base, _ = tiny_model("llama", tokenizer)
    with torch.no_grad():  # plain peft: the root adapter is the continual model
        plain = PeftModel.from_pretrained(base, str(folder)).eval()(input_ids=IDS).logits
    torch.testing.assert_close(plain, continual_logits(lwf), rtol=1e-5, atol=1e-5)

    base, _ = tiny_model("llama", tokenizer)
    resumed = ContinualTrainer.from_continual(str(folder), base, training_args(tmp_path / "more"), processing_class=tokenizer)
    assert isinstance(resumed.method, LwfMethod) and resumed.result.task_names == ["colors", "animals"]
    config = resumed.peft_model.peft_config["default"]
    assert type(config) is LwfConfig and config.distill_weight == 10.0 and config.distill_positions == "prompt"
    torch.testing.assert_close(continual_logits(resumed), continual_logits(lwf), rtol=1e-5, atol=1e-5)
    result = resumed.train_task(synthetic_task("fruits", n_train=4))
    assert result.task_names == ["colors", "animals", "fruits"]
    assert {"loss_distill"} <= {k for entry in resumed.state.log_history for k in entry}


def test_teacher_and_student_forwards_go_through_the_wrapped_model(tokenizer, tmp_path):
    """Per micro-batch: the task forward, the base's (teacher) and the student's, all through Trainer's model."""
    model, targets = tiny_model("llama", tokenizer)
    peft_model = get_peft_model(model, LwfConfig(r=4, lora_alpha=8, target_modules=targets))
    trainer = ContinualTrainer(model=peft_model, args=training_args(tmp_path, gradient_accumulation_steps=2),
                               processing_class=tokenizer, max_source_length=64)  # fmt: skip
    calls, training_step = [], trainer.training_step

    def counted_step(model, inputs, num_items_in_batch=None):
        counting = Counting(model)
        loss = training_step(counting, inputs, num_items_in_batch)
        calls.append(counting.calls)
        return loss

    trainer.training_step = counted_step
    trainer.train_continual([synthetic_task("colors", n_train=8)])
    assert calls == [3, 3]


# ------------------------------------------------------------------------------------------------ general prompts

GENERAL_PROMPTS = [f"Tell me about item number {i} please." for i in range(10)]


def general_lwf(tokenizer, tmp_path, distill_general_examples):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(GENERAL_PROMPTS))
    config = LwfConfig(r=4, lora_alpha=8, distill_weight=1.0, distill_general_examples=distill_general_examples,
                       general_prompts=str(pool), general_answer_tokens=6)  # fmt: skip
    return train(tokenizer, tmp_path, config, epochs=3)


@pytest.fixture(scope="module")
def lwf_general(tokenizer, tmp_path_factory):
    return general_lwf(tokenizer, tmp_path_factory.mktemp("general"), 8), general_lwf(tokenizer, tmp_path_factory.mktemp("plain"), 0)


def general_kl(trainer, rows):
    """KL(base || model) at the rows' answer tokens, full logits, one row at a time (independent of the method)."""
    model = trainer.peft_model.eval()
    values = []
    with torch.no_grad():
        for row in rows:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            mask = torch.zeros(1, len(labels), dtype=torch.bool)
            mask[0, :-1] = labels[1:] != IGNORE_INDEX
            tuned = model(input_ids=ids).logits
            with model.disable_adapter():
                base = model(input_ids=ids).logits
            values.append(float(naive_kl(tuned, base, mask, 1.0)))
    trainer.method.restore_adapter_state(model)
    return sum(values) / len(values)


def test_kl_on_general_prompts_keeps_the_base_there(lwf_general):
    """The defining behaviour: with the term, the model stays closer to the base on the general rows (the base's own
    answers) than LwF without it, the term is logged at every step from the first task, and no task row is kept."""
    with_general, without = lwf_general
    rows = with_general.method.general.examples
    assert 1 <= len(rows) <= 8 and len(without.method.general) == 0
    assert general_kl(with_general, rows) < 0.75 * general_kl(without, rows)  # measured: 0.063 vs 0.110
    logged = [e for e in with_general.state.log_history if "loss_distill" in e]
    assert logged and all("loss_distill_general" in e for e in logged)
    meta, tensors = with_general.method.state_dict()
    assert set(tensors) >= {"general.input_ids", "general.labels"}
    assert all(k.startswith(LwfMethod.data_tensor_prefixes) for k in tensors if k.startswith("general."))


def test_general_term_equals_an_independent_kl_on_a_general_batch(lwf_general):
    trainer, _ = lwf_general
    method, model = trainer.method, trainer.peft_model
    rows = method.general.examples[:3]
    batch = method.collator(rows)
    model.train()
    term = method.kl_to_base(model, model, batch, "targets")
    model.eval()
    with torch.no_grad():
        tuned = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with model.disable_adapter():
            base = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    method.restore_adapter_state(model)
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX
    torch.testing.assert_close(term.double(), naive_kl(tuned, base, mask, 1.0), rtol=1e-4, atol=1e-6)


def test_each_process_distils_its_own_slice_of_one_general_draw(lwf_general, monkeypatch):
    """Under DDP every process draws the same general rows (same seed) and takes its own slice, as replay does, so
    N processes distil N batches' worth of general rows, not N copies of one."""
    method = lwf_general[0].method
    seen = []
    monkeypatch.setattr(method, "kl_to_base",
                        lambda model, wrapped, batch, positions: seen.append(batch) or torch.zeros(()))  # fmt: skip
    monkeypatch.setattr(method, "general_batch_size", 2)
    generator = method.general.rows.generator
    state = generator.get_state()
    expected = method.collator(method.general.sample(4))
    for process in (0, 1):
        generator.set_state(state)
        monkeypatch.setattr(method, "process_index", process)
        monkeypatch.setattr(method, "num_processes", 2)
        method.loss_terms(None, {"input_ids": torch.zeros(1, 1, dtype=torch.long)}, wrapped=object())
    generator.set_state(state)

    def rows(batch):  # the rows' real tokens, padding dropped
        return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]

    assert len(seen) == 4  # each call distils the task batch, then the general one
    assert rows(seen[1]) + rows(seen[3]) == rows(expected) and rows(seen[1]) != rows(seen[3])


def test_general_rows_survive_save_and_continue(lwf_general, tokenizer, tmp_path, monkeypatch):
    from peft_continual import self_rehearsal

    trainer, _ = lwf_general
    folder = trainer.save_continual(tmp_path / "final")
    base, _ = tiny_model("llama", tokenizer)
    restored = ContinualTrainer.from_continual(str(folder), base, training_args(tmp_path / "more"), processing_class=tokenizer)
    assert restored.method.general.examples == trainer.method.general.examples
    monkeypatch.setattr(self_rehearsal, "generate_batch", lambda *a, **k: pytest.fail("answered twice"))
    restored.train_continual([synthetic_task("fruits", n_train=4)])
