"""Generation tasks end to end: chat rendering and loss masks, the exact prompt/target boundary, greedy decoding,
predictions files, tokenising once, both protocols from one run, and a mixed sequence for every method."""

import copy
import json
import string
from pathlib import Path

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import OPPOSITES, generation_task, make_chat_tokenizer, memorised_task, synthetic_task, tiny_model, training_args
from peft_continual import ContinualTrainer, ILoraConfig, IncLoraConfig, NLoraConfig, OLoraConfig, ReplayConfig, evaluate_task
from peft_continual.demo_model import DEFAULT_CACHE
from peft_continual.evaluation import PromptBatch, generate_batch, greedy_config
from peft_continual.tasks import IGNORE_INDEX, PromptEncoder, TaskSpecError, encode_eval, fit_max_new_tokens, tokenize_task
from peft_continual.tasks.encoding import GENERATION_BUDGET_FLOOR

# the demo model, where it was converted once (by the demo, or a benchmark run)
SMOLLM2 = next((p for p in (DEFAULT_CACHE, Path("/work/cache/smollm2")) if (p / "tokenizer_config.json").is_file()), DEFAULT_CACHE)


def target_tokens(features, row=0):
    return [t for t, label in zip(features[row]["input_ids"], features[row]["labels"]) if label != IGNORE_INDEX]


# ------------------------------------------------------------------------------------------------ rendering


def test_chat_template_masks_everything_but_target_and_end_of_turn(chat_tokenizer):
    """The target is the answer and all the template writes after it (ChatML's end-of-turn and newline), as TRL's
    SFTTrainer trains a conversation: the whole sequence is the template's rendering."""
    task = generation_task("opposites", n_train=4)
    features = tokenize_task(chat_tokenizer, task, 64, chat=True)
    for i, row in enumerate(task.train):
        assert chat_tokenizer.decode(target_tokens(features, i)) == row["completion"] + "<|im_end|>\n"
        assert chat_tokenizer.decode(features[i]["input_ids"]) == (
            f"<|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n{row['completion']}<|im_end|>\n"
        )
    # the classification prompt goes in the user turn, options included; the label is the assistant turn
    colors = synthetic_task("colors", n_train=2)
    features = tokenize_task(chat_tokenizer, colors, 64, chat=True)
    text = chat_tokenizer.decode(features[0]["input_ids"])
    assert text.startswith("<|im_start|>user\nWhich kind? Choose one from the option.\nOption: cold, warm \n")
    assert chat_tokenizer.decode(target_tokens(features)) == colors.train[0]["label"] + "<|im_end|>\n"
    assert PromptEncoder(chat_tokenizer, 64, chat=True).stop_ids() == [chat_tokenizer.eos_token_id, chat_tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_earlier_chat_turns_are_context_in_both_renderings(chat_tokenizer, tokenizer):
    context = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    task = generation_task("opposites", n_train=2)
    task.train = task.train.map(lambda r: {"context": context})
    chat = chat_tokenizer.decode(tokenize_task(chat_tokenizer, task, 64, chat=True)[0]["input_ids"])
    assert chat.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nopposite of")
    plain = tokenizer.decode(tokenize_task(tokenizer, task, 64)[0]["input_ids"])
    assert plain.startswith("Dataset:opposites\nUser: hi\nAssistant: hello\nUser: opposite of big\nAnswer: small")


def sentencepiece_tokenizer():
    """A Unigram tokenizer normalised as Llama-2's (prepend ▁, spaces -> ▁): a piece tokenised alone gets a stray ▁."""
    words = sorted({w for pair in OPPOSITES.items() for w in pair} | {"opposite", "of", "Answer:", "Dataset:opposites"})
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation + "\n"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [(c, -5.0) for c in chars]
    vocab += [("▁" + w, -1.0) for w in words] + [(w, -1.5) for w in words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def test_sentencepiece_boundary_has_no_stray_piece():
    tok = sentencepiece_tokenizer()
    alone = tok.convert_ids_to_tokens(tok(" cold", add_special_tokens=False)["input_ids"])
    assert alone == ["▁", "▁cold"]  # what tokenising the target on its own would train (the trap this guards against)
    task = generation_task("opposites", n_train=8)
    features = tokenize_task(tok, task, 64)
    for i, row in enumerate(task.train):
        whole = tok(tok.decode(features[i]["input_ids"][:-1]), add_special_tokens=False)["input_ids"]
        target = target_tokens(features, i)
        assert target[-1] == tok.eos_token_id and "▁" not in tok.convert_ids_to_tokens(target)
        assert features[i]["input_ids"][:-1] == whole  # the training sequence is the whole string's tokenisation
        assert tok.decode(target[:-1]).strip() == row["completion"]


# Llama-2-chat's template as published: a space between [/INST] and the answer; roles must alternate.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# Qwen3's rule for the final assistant turn: a think block (empty without reasoning) before the answer; a
# reasoning written into the answer as <think>...</think> is moved into that block.
QWEN3_TEMPLATE = (
    "{%- for m in messages %}{%- if m.role == 'assistant' %}{%- set content = m.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.last %}{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def llama2_tokenizer():
    tok = sentencepiece_tokenizer()
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.chat_template = LLAMA2_TEMPLATE
    return tok


def qwen3_tokenizer():
    tok = make_chat_tokenizer()
    tok.chat_template = QWEN3_TEMPLATE
    return tok


@pytest.mark.parametrize(
    "make, before_answer, end_of_turn",
    [(llama2_tokenizer, "[/INST]", " </s>"), (qwen3_tokenizer, "<|im_start|>assistant\n<think>\n\n</think>\n\n", "<|im_end|>\n")],
    ids=["llama2", "qwen3"],
)
def test_training_sequence_is_the_templates_rendering_of_the_conversation(make, before_answer, end_of_turn):
    """Text the template writes between its generation prompt and the answer is trained, and prompts evaluation."""
    tok = make()
    task = generation_task("opposites", n_train=4)
    context = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    task.train = task.train.map(lambda r, i: {"context": json.dumps(context) if i % 2 else ""}, with_indices=True)
    task.eval = task.train
    features = tokenize_task(tok, task, 128, chat=True)
    prompts = encode_eval(tok, task, 128, chat=True).prompts
    for i, row in enumerate(task.train):
        turns = (context if i % 2 else []) + [{"role": "user", "content": row["prompt"]}]
        rendered = tok.apply_chat_template(turns + [{"role": "assistant", "content": row["completion"]}], tokenize=False)
        ids, labels = features[i]["input_ids"], features[i]["labels"]
        assert ids == tok(rendered, add_special_tokens=False)["input_ids"]  # all of it, as TRL trains a conversation
        n_prompt = labels.count(IGNORE_INDEX)
        assert labels == [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        assert tok.decode(ids[:n_prompt]).endswith(before_answer)
        assert tok.decode(ids[n_prompt:]).lstrip() == row["completion"] + end_of_turn
        assert prompts[i] == ids[:n_prompt]  # generation is prompted with the prefix that training saw


@pytest.mark.parametrize("make, answer", [(qwen3_tokenizer, "<think>\nhot is warm\n</think>\n\ncold"), (llama2_tokenizer, "cold ")])
def test_answer_rewritten_by_the_template_is_refused(make, answer):
    task = generation_task("opposites", n_train=2)
    task.train = datasets.Dataset.from_list([{"prompt": "opposite of hot", "completion": answer, "context": ""}])
    with pytest.raises(TaskSpecError, match="the chat template rewrites the answer"):
        tokenize_task(make(), task, 128, chat=True)


def test_long_conversation_never_opens_with_an_assistant_turn():
    """Llama-2's template refuses a conversation that opens with an assistant turn: a shortened one never does."""
    tok = llama2_tokenizer()
    context = [{"role": "user", "content": "hot " * 60 + "big"}, {"role": "assistant", "content": "cold " * 60 + "small"}]
    row = {"prompt": "opposite of old", "completion": "new", "context": json.dumps(context)}
    text, ids = PromptEncoder(tok, 40, chat=True).prompt(generation_task("opposites"), row)
    assert len(ids) <= 40 and text == "<s>[INST] opposite of old [/INST]"


@pytest.mark.skipif(not SMOLLM2.is_dir(), reason="the converted SmolLM2 checkpoint is not present")
def test_smollm2_tokenizer_and_chat_template():
    tok = AutoTokenizer.from_pretrained(str(SMOLLM2))
    task = generation_task("opposites", n_train=3)
    chat = tokenize_task(tok, task, 128, chat=True)
    for i, row in enumerate(task.train):
        assert tok.decode(target_tokens(chat, i)) == row["completion"] + "<|im_end|>\n"
        assert tok.decode(chat[i]["input_ids"]).endswith(f"<|im_start|>assistant\n{row['completion']}<|im_end|>\n")
        assert chat[i]["input_ids"] == tok(tok.decode(chat[i]["input_ids"]), add_special_tokens=False)["input_ids"]
    plain = tokenize_task(tok, task, 128, chat=False)
    assert tok.decode(target_tokens(plain)) == " " + task.train[0]["completion"] + tok.eos_token


# ------------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_batched_cached_greedy_equals_naive_decoding(arch, tokenizer):
    model, _ = tiny_model(arch, tokenizer)
    model.eval()
    stop = [tokenizer.eos_token_id]
    config = greedy_config(pad_token_id=0, stop_ids=stop, max_new_tokens=6)
    # different lengths (left padding in one batch), one-token prompts (nothing cached before generate), a shared
    # prefix (run once, the padding after it), identical prompts (all but their last token shared)
    for prompts in ([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], [[5], [10]], [[5, 6, 7, 8, 9], [5, 6, 11], [5, 6, 7, 14]],
                    [[5, 6, 7], [5, 6, 7]]):  # fmt: skip
        with torch.no_grad():
            fast = generate_batch(model, PromptBatch.prefill(model, prompts, 0, whole=False), config)
            for prompt, got in zip(prompts, fast):
                ids, expected = list(prompt), []
                for _ in range(6):  # no padding, no cache: the whole sequence every step
                    token = model(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item()
                    if token in stop:
                        break
                    expected.append(token)
                    ids.append(token)
                assert got == expected


def make_trainer(tokenizer, tmp_path, config=None, arch="llama", **kwargs):
    model, targets = tiny_model(arch, tokenizer)
    config = config or LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    if config.target_modules is None:
        config.target_modules = set(targets)
    args = training_args(tmp_path, **{"num_train_epochs": 15, "learning_rate": 1e-2, **kwargs.pop("args", {})})
    return ContinualTrainer(model=get_peft_model(model, config), args=args, processing_class=tokenizer, max_source_length=64, **kwargs)


def test_trained_generation_task_predictions_file_and_example_scores(tokenizer, tmp_path):
    task = generation_task("opposites", n_train=8)
    task.eval = task.train
    trainer = make_trainer(tokenizer, tmp_path, evaluation_method="generate", max_new_tokens=40, args={"num_train_epochs": 40})
    result = trainer.train_continual([task])
    assert task.max_new_tokens == GENERATION_BUDGET_FLOOR  # one-word answers: the floor (under the cap)
    path = tmp_path / "out" / "predictions" / "after_1_opposites" / "opposites.generate.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [l["target"] for l in lines] == list(task.eval["completion"])
    assert [l["score"] for l in lines] == result.example_scores[0][0] and result.task_metrics == ["exact_match"]
    assert result.accuracy_matrix[0][0] == sum(l["score"] for l in lines) / len(lines) == 1.0, lines
    assert all(l["prompt"].endswith("\nAnswer:") and l["prediction"] == l["target"] for l in lines)


def test_decoding_budget_covers_every_reference_and_has_a_floor(tokenizer):
    """It used to be the longest *training* target: a longer test answer was cut, and so was a run-on answer after a
    right one-word start ("cold. The opposite..." kept as "cold"), scoring as an exact match."""
    task = generation_task("opposites", n_train=4)
    features = tokenize_task(tokenizer, task, 64)
    fit_max_new_tokens(tokenizer, task, features, cap=128)
    assert task.max_new_tokens == GENERATION_BUDGET_FLOOR
    long_answer = " ".join(["mango banana grape"] * 20)
    task = generation_task("opposites", n_train=4)
    task.eval = task.eval.map(lambda row, i: {"completion": long_answer if i == 0 else row["completion"]}, with_indices=True)
    fit_max_new_tokens(tokenizer, task, features, cap=128)
    assert task.max_new_tokens == len(tokenizer(long_answer, add_special_tokens=False)["input_ids"]) + 1 > GENERATION_BUDGET_FLOOR
    task.max_new_tokens = None
    fit_max_new_tokens(tokenizer, task, features, cap=16)
    assert task.max_new_tokens == 16


def test_max_new_tokens_is_capped(tokenizer, tmp_path, monkeypatch):
    import peft_continual.evaluation as evaluation

    used, original = [], evaluation.greedy_config
    monkeypatch.setattr(evaluation, "greedy_config", lambda **k: used.append(k["max_new_tokens"]) or original(**k))
    task = generation_task("reverse", n_train=4)
    trainer = make_trainer(tokenizer, tmp_path, evaluation_method="generate", max_new_tokens=2, args={"num_train_epochs": 1})
    trainer.train_continual([task])
    assert task.max_new_tokens == 2 and used == [2]


def test_evaluation_prompts_are_tokenised_once(tokenizer, tmp_path, monkeypatch):
    tasks = [synthetic_task("colors", n_train=4), generation_task("opposites", n_train=4)]
    trainer = make_trainer(tokenizer, tmp_path, evaluation_method=["generate", "rank"], args={"num_train_epochs": 1})
    calls = []
    original = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    trainer.evaluate_tasks(tasks)
    first = len(calls)
    assert first >= sum(len(t.eval) for t in tasks)  # every prompt encoded at the first evaluation
    trainer.evaluate_tasks(tasks)
    assert len(calls) == first  # ... and never again


# ------------------------------------------------------------------------------------------------ bad input


def test_chat_template_on_without_one_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="chat_template='on' but the tokenizer .* has no chat template"):
        make_trainer(tokenizer, tmp_path, chat_template="on")


def test_generation_task_given_to_rank_scoring(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, evaluation_method="rank")
    with pytest.raises(ValueError, match="'opposites' is a generation task: it has no label options to rank"):
        trainer.train_continual([synthetic_task("colors"), generation_task("opposites")])
    assert not list((tmp_path / "out").glob("task_*"))  # refused before any training
    with pytest.raises(ValueError, match="no label options to rank"):
        evaluate_task(trainer.model, tokenizer, generation_task("opposites"), method="rank")


# ------------------------------------------------------------------------------------------------ every method

METHODS = {
    "seqlora": LoraConfig(r=4, lora_alpha=8),
    "inclora": IncLoraConfig(r=4, lora_alpha=8),
    "olora": OLoraConfig(r=4, lora_alpha=8),
    "nlora": NLoraConfig(r=4, lora_alpha=8, collision_lambda=1.0),
    "replay": ReplayConfig(r=4, lora_alpha=8, replay_buffer_size=16, replay_batch_size=2),
    "ilora": ILoraConfig(r=4, lora_alpha=8, replay_buffer_size=16, replay_batch_size=2, ema_decay=0.8),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_mixed_classification_and_generation_sequence(method, chat_tokenizer, tmp_path):
    tasks = [memorised_task("colors", n=8), generation_task("opposites", n_train=8, n_eval=4),
             generation_task("reverse", n_train=8, n_eval=4, metric="rouge_l")]  # fmt: skip
    trainer = make_trainer(chat_tokenizer, tmp_path, copy.deepcopy(METHODS[method]), evaluation_method=["generate", "rank"],
                           evaluate_zero_shot=True, evaluate_seen="all", args={"num_train_epochs": 2})  # fmt: skip
    assert trainer.chat  # auto: the tokenizer has a chat template
    result = trainer.train_continual(tasks)
    R, rank = result.accuracy_matrix, result.secondary["rank"]
    assert result.task_metrics == ["accuracy", "exact_match", "rouge_l"] and rank.task_metrics == ["accuracy", None, None]
    assert all(R[i][j] is not None for i in range(3) for j in range(i + 1))
    assert [len(result.example_scores[2][j]) for j in range(3)] == [8, 4, 4]
    assert all(rank.accuracy_matrix[i][0] is not None and rank.accuracy_matrix[i][1:] == [None, None] for i in range(3))
    assert len(result.zero_shot_example_scores[1]) == 4 and rank.zero_shot[1:] == [None, None]
    after_last = tmp_path / "out" / "predictions" / "after_3_reverse"
    assert sorted(p.name for p in after_last.iterdir()) == [
        "colors.generate.jsonl", "colors.rank.jsonl", "opposites.generate.jsonl", "reverse.generate.jsonl"]  # fmt: skip
    if method in ("replay", "ilora"):  # the buffer holds generation examples like any other
        examples = trainer.method.buffer.examples
        generated = [e for e in examples if e["task_index"] in (1, 2)]
        assert len(examples) == 16 and generated
        end = chat_tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert all([t for t in e["labels"] if t != IGNORE_INDEX][-len(end):] == end for e in generated)


def test_saved_mixed_run_carries_task_definitions(chat_tokenizer, tmp_path):
    tasks = [synthetic_task("colors", n_train=4), generation_task("opposites", n_train=4, metric="f1")]
    trainer = make_trainer(chat_tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), evaluation_method=["generate", "rank"],
                           args={"num_train_epochs": 1})  # fmt: skip
    trainer.train_continual(tasks)
    trainer.save_continual(str(tmp_path / "final"))
    model, _ = tiny_model("llama", chat_tokenizer)
    again = ContinualTrainer.from_continual(str(tmp_path / "final"), model, training_args(tmp_path / "2"), processing_class=chat_tokenizer)
    restored = again.tasks[1]
    assert (restored.kind, restored.metric, restored.max_new_tokens) == ("generation", "f1", tasks[1].max_new_tokens)
    assert list(restored.eval["completion"]) == list(tasks[1].eval["completion"]) and again.chat
    assert again.evaluation_methods == ["generate", "rank"] and again.result.secondary["rank"].task_metrics == ["accuracy", None]
    scores = again.evaluate_tasks(again.tasks)
    assert scores["generate"][1].score == pytest.approx(trainer.result.accuracy_matrix[-1][1])
    assert scores["rank"][1] is None


def test_runs_saved_before_generation_tasks_still_load(tokenizer, tmp_path):
    """A state without task kinds, metrics, example scores or the new trainer options (as saved before) loads."""
    trainer = make_trainer(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), args={"num_train_epochs": 1},
                           evaluation_method="rank")  # the default then  # fmt: skip
    trainer.train_continual([synthetic_task("colors", n_train=4)])
    folder = tmp_path / "final"
    trainer.save_continual(str(folder))
    state = json.loads((folder / "continual_state.json").read_text())
    for task in state["tasks"]:
        for key in ("kind", "metric", "max_new_tokens"):
            del task[key]
    for key in ("task_metrics", "example_scores", "zero_shot_example_scores", "secondary"):
        del state["result"][key]
    state["trainer"] = {"evaluation_method": "rank", "max_source_length": 64, "evaluate_unseen": False}
    (folder / "continual_state.json").write_text(json.dumps(state))
    model, _ = tiny_model("llama", tokenizer)
    again = ContinualTrainer.from_continual(str(folder), model, training_args(tmp_path / "2"), processing_class=tokenizer)
    assert again.tasks[0].kind == "classification" and again.tasks[0].metric == "accuracy"
    assert again.result.task_metrics == ["accuracy"] and again.result.example_scores == [[None]]
    with pytest.raises(ValueError, match="no label options to rank"):  # the saved run scores by ranking
        again.train_task(generation_task("opposites", n_train=4))
    result = again.train_task(synthetic_task("animals", n_train=4))
    assert result.task_metrics == ["accuracy", "accuracy"] and [len(r) for r in result.example_scores] == [2, 2]
    assert result.example_scores[0][0] is None and len(result.example_scores[1][0]) == len(again.tasks[0].eval)
