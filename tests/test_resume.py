"""Resume after a crash: a run SIGKILLed in the middle of task 2 resumes and ends exactly like an uninterrupted one."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import torch
    from peft import get_peft_model
    from transformers import TrainerCallback
    from conftest import make_tokenizer, memorised_task, tiny_model, training_args
    from peft_continual import ContinualTrainer, ILoraConfig, NLoraConfig

    method, out = sys.argv[1], sys.argv[2]
    kill_at = os.environ.get("KILL_AT")  # "task:step"
    tokenizer = make_tokenizer()
    model, targets = tiny_model("llama", tokenizer)
    config = {{"nlora": NLoraConfig(r=4, lora_alpha=8, target_modules=targets, collision_lambda=0.5),
               "ilora": ILoraConfig(r=4, lora_alpha=8, target_modules=targets, ema_decay=0.8, replay_buffer_size=5,
                                    replay_batch_size=2)}}[method]
    args = training_args(__import__("pathlib").Path(out), num_train_epochs=2, learning_rate=1e-2,
                         save_strategy="steps", save_steps=1, per_device_train_batch_size=4)
    trainer = ContinualTrainer(model=get_peft_model(model, config), args=args, processing_class=tokenizer,
                               max_source_length=64)

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            task, step = map(int, kill_at.split(":"))
            if len(trainer.result.accuracy_matrix) == task - 1 and state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

    if kill_at:
        trainer.add_callback(Crash())
    tasks = [memorised_task(name, 8) for name in ("colors", "animals", "fruits")]
    trainer.train_continual(tasks, resume_from_checkpoint=True)
    trainer.save_continual(os.path.join(out, "final"))
    """
)


def run(script, method, out, kill_at=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KILL_AT", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(script), method, str(out)], env=env, capture_output=True, text=True, timeout=600)


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            tensors[f"{file.relative_to(folder)}:{key}"] = value
    return tensors


@pytest.mark.parametrize("method", ["nlora", "ilora"])
def test_sigkill_in_task_two_resumes_to_the_same_adapters(method, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    reference = run(script, method, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    crashed = run(script, method, tmp_path / "crashed", kill_at="2:3")
    assert crashed.returncode == -signal.SIGKILL
    progress = tmp_path / "crashed" / "out" / "continual_progress"
    assert progress.is_dir()  # task 1 finished and was recorded
    task_2 = tmp_path / "crashed" / "out" / "task_2_animals"
    assert sorted(p.name for p in task_2.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    resumed = run(script, method, tmp_path / "crashed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout and "1/3 task(s) already trained" in resumed.stdout
    assert "=== [" + method + "] task 1/3" not in resumed.stdout  # task 1 is not retrained

    expected, actual = saved_tensors(tmp_path / "reference" / "final"), saved_tensors(tmp_path / "crashed" / "final")
    assert expected.keys() == actual.keys() and len(expected) > 0
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-5, msg=key)
    ref_state = (tmp_path / "reference" / "final" / "continual_state.json").read_text()
    new_state = (tmp_path / "crashed" / "final" / "continual_state.json").read_text()
    import json

    ref, new = json.loads(ref_state)["result"], json.loads(new_state)["result"]
    assert new["accuracy_matrix"] == ref["accuracy_matrix"]


def test_resuming_with_other_tasks_is_refused(tokenizer, tmp_path):
    from peft import get_peft_model

    from conftest import memorised_task, tiny_model, training_args
    from peft_continual import ContinualTrainer, NLoraConfig
    from peft_continual.persistence import ContinualStateError

    def trainer():
        model, targets = tiny_model("llama", tokenizer)
        return ContinualTrainer(model=get_peft_model(model, NLoraConfig(r=4, target_modules=targets)),
                                args=training_args(tmp_path, num_train_epochs=1), processing_class=tokenizer)  # fmt: skip

    trainer().train_continual([memorised_task("colors", 4)])
    with pytest.raises(ContinualStateError, match=r"over tasks \['colors'\], not a NLoraConfig run over \['fruits'\]"):
        trainer().train_continual([memorised_task("fruits", 4)], resume_from_checkpoint=True)
