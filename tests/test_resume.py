"""Resume after a crash: a run SIGKILLed inside a task or between two resumes and ends exactly like an uninterrupted one."""

import json
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

METHODS = ["seqlora", "inclora", "nlora", "olora", "replay", "ilora", "nlora_replay", "lwf", "ssr", "osf",
           "self_rehearsal"]

# One process imports everything once, then forks a fresh child per run, so that each run starts from the same
# state at a fraction of a new interpreter's cost; children may SIGKILL themselves.
SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback
    from conftest import make_tokenizer, memorised_task, tiny_model, training_args
    from peft_continual import ContinualOSFConfig, ContinualTrainer, GeneralRehearsalConfig, IncLoraConfig, ILoraConfig, LwfConfig, NLoraConfig, NLoraReplayConfig, OLoraConfig, ReplayConfig, SsrConfig

    tokenizer = make_tokenizer()


    def train(method, out, kill_at):
        model, targets = tiny_model("llama", tokenizer)
        common = dict(r=4, lora_alpha=8, target_modules=targets)
        replay = dict(replay_buffer_size=5, replay_batch_size=2)
        config = {{"seqlora": LoraConfig(**common), "inclora": IncLoraConfig(**common),
                   "nlora": NLoraConfig(**common, collision_lambda=0.5), "olora": OLoraConfig(**common, l2_lambda=0.1),
                   "replay": ReplayConfig(**common, **replay), "ilora": ILoraConfig(**common, **replay, ema_decay=0.8),
                   "nlora_replay": NLoraReplayConfig(**common, **replay, collision_lambda=0.5),
                   "lwf": LwfConfig(**common, distill_weight=1.0, distill_general_examples=4, general_answer_tokens=4),
                   "ssr": SsrConfig(**common, **replay, ssr_examples_per_task=4, ssr_max_new_tokens=8),
                   "osf": ContinualOSFConfig(target_modules=targets, project_updates=True),
                   "self_rehearsal": GeneralRehearsalConfig(**common, general_rehearsal_examples=4, general_answer_tokens=4,
                                                            replay_batch_size=2)}}[method]
        args = training_args(out, num_train_epochs=1, learning_rate=1e-2, save_strategy="steps", save_steps=1,
                              per_device_train_batch_size=4)
        trainer = ContinualTrainer(model=get_peft_model(model, config), args=args, processing_class=tokenizer,
                                   max_source_length=64)

        class Crash(TrainerCallback):  # "between": when task 2 starts; "step": after step 2 of task 2, unsaved
            def on_train_begin(self, args, state, control, **kwargs):
                if kill_at == "between" and "task_2" in args.output_dir:
                    os.kill(os.getpid(), signal.SIGKILL)

            def on_step_end(self, args, state, control, **kwargs):
                if kill_at == "step" and "task_2" in args.output_dir and state.global_step == 2:
                    os.kill(os.getpid(), signal.SIGKILL)

        trainer.add_callback(Crash())
        tasks = [memorised_task(name, 12) for name in ("colors", "animals")]
        trainer.train_continual(tasks, resume_from_checkpoint=True)
        trainer.save_continual(os.path.join(out, "final"))


    def run(method, root, name, kill_at=None):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            log = os.open(folder / ("killed.log" if kill_at else "run.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1), os.dup2(log, 2)
            try:
                train(method, folder, kill_at)
                code = 0
            except BaseException:
                __import__("traceback").print_exc()
                code = 1
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


    for method in sys.argv[2:]:
        root = Path(sys.argv[1]) / method
        codes = {{"reference": run(method, root, "reference")}}
        for place in ("step", "between"):
            codes[place] = run(method, root, place, kill_at=place)
            codes[place + "_checkpoints"] = sorted(p.name for p in (root / place / "out").glob("task_2_*/checkpoint-*"))
            codes[place + "_resumed"] = run(method, root, place)
        (root / "codes.json").write_text(json.dumps(codes))
    """
)


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            tensors[f"{file.relative_to(folder)}:{key}"] = value
    return tensors


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """For every method: an uninterrupted run, and runs killed inside task 2 or as it starts, then resumed."""
    root = tmp_path_factory.mktemp("resume")
    script = root / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    driver = subprocess.run([sys.executable, str(script), str(root), *METHODS], env=env, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert driver.returncode == 0, driver.stderr[-3000:]
    return root


@pytest.mark.parametrize("method", METHODS)
def test_sigkill_inside_or_between_tasks_resumes_to_the_same_run(method, killed_runs):
    """Killed after step 2 of task 2 (resumes from checkpoint-1) or as task 2 starts (no checkpoint yet)."""
    tmp_path = killed_runs / method
    codes = json.loads((tmp_path / "codes.json").read_text())
    logs = {p.parent.name + "/" + p.name: p.read_text()[-3000:] for p in tmp_path.glob("*/*.log")}
    assert codes == {"reference": 0, "step": -signal.SIGKILL, "step_resumed": 0, "between": -signal.SIGKILL,
                     "between_resumed": 0, "step_checkpoints": ["checkpoint-1"], "between_checkpoints": []}, (codes, logs)  # fmt: skip
    expected = saved_tensors(tmp_path / "reference" / "final")
    reference = json.loads((tmp_path / "reference" / "final" / "continual_state.json").read_text())["result"]
    for place in ("step", "between"):
        resumed = (tmp_path / place / "run.log").read_text()
        assert "Resuming from" in resumed and "1/2 task(s) already trained" in resumed, resumed[-3000:]
        assert f"[{method}] task 1/2" not in resumed  # task 1 is not retrained
        actual = saved_tensors(tmp_path / place / "final")
        assert expected.keys() == actual.keys() and len(expected) > 0
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-5, msg=f"{place}: {key}")
        result = json.loads((tmp_path / place / "final" / "continual_state.json").read_text())["result"]
        assert result["accuracy_matrix"] == reference["accuracy_matrix"], place


def test_resuming_with_other_tasks_another_base_or_other_hyperparameters_is_refused(tokenizer, tmp_path):
    from peft import get_peft_model

    from conftest import memorised_task, tiny_model, training_args
    from peft_continual import ContinualTrainer, NLoraConfig
    from peft_continual.persistence import ContinualStateError

    def trainer(seed=0, **config):
        model, targets = tiny_model("llama", tokenizer, seed=seed)
        return ContinualTrainer(model=get_peft_model(model, NLoraConfig(r=4, target_modules=targets, **config)),
                                args=training_args(tmp_path, num_train_epochs=1), processing_class=tokenizer)  # fmt: skip

    trainer().train_continual([memorised_task("colors", 4)])
    with pytest.raises(ContinualStateError, match=r"over tasks \['colors'\], not a NLoraConfig run over \['fruits'\]"):
        trainer().train_continual([memorised_task("fruits", 4)], resume_from_checkpoint=True)
    with pytest.raises(ContinualStateError, match=r"not the base model .* its weights differ in \["):  # same shapes
        trainer(seed=1).train_continual([memorised_task("colors", 4)], resume_from_checkpoint=True)
    with pytest.raises(ContinualStateError, match=r"other hyper-parameters \(collision_lambda=.* there, 0.7 now\)"):
        trainer(collision_lambda=0.7).train_continual([memorised_task("colors", 4)], resume_from_checkpoint=True)
    resumed = trainer()  # the same hyper-parameters resume; so does a checkpoint that recorded none (older runs)
    resumed._cl_check_hyperparameters({"task_index": 0}, "old-checkpoint")
    resumed.train_continual([memorised_task("colors", 4)], resume_from_checkpoint=True)
