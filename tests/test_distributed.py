"""Two CPU processes (gloo DDP) at the same global batch end with the adapters and scores one process gets."""

import json
import os
import socket
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
    import json, os, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from peft import get_peft_model
    from conftest import make_tokenizer, memorised_task, tiny_model, training_args
    import peft_continual.trainer
    from peft_continual import ContinualTrainer, ILoraConfig, NLoraConfig

    scored_rows = []  # the evaluation rows this process scored
    evaluate_protocols = peft_continual.trainer.evaluate_protocols
    def counting(model, tokenizer, task, methods, **kwargs):
        scored_rows.extend(kwargs["encoding"].prompt_texts)  # the trainer passes each process's shard of the prompts
        return evaluate_protocols(model, tokenizer, task, methods, **kwargs)
    peft_continual.trainer.evaluate_protocols = counting

    method, out, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    tokenizer = make_tokenizer()
    model, targets = tiny_model("llama", tokenizer)
    config = {{"nlora": NLoraConfig(r=4, lora_alpha=8, target_modules=targets, collision_lambda=0.5),
               "ilora": ILoraConfig(r=4, lora_alpha=8, target_modules=targets, ema_decay=0.8, replay_buffer_size=6)}}[method]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = training_args(out, num_train_epochs=2, learning_rate=1e-2, per_device_train_batch_size=batch,
                         ddp_backend="gloo" if distributed else None, ddp_find_unused_parameters=False)
    trainer = ContinualTrainer(model=get_peft_model(model, config), args=args, processing_class=tokenizer,
                               max_source_length=64)
    trainer.train_continual([memorised_task(name, 8) for name in ("colors", "animals")])
    trainer.save_continual(out / "final")
    (out / f"rank{{args.process_index}}.done").write_text(json.dumps({{
        "buffer": len(trainer.method.buffer) if method == "ilora" else 0, "scored_rows": scored_rows,
        "matrix": trainer.result.accuracy_matrix}}))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {
        f"{file.relative_to(folder)}:{key}": value
        for file in sorted(folder.rglob("*.safetensors"))
        for key, value in load_file(str(file)).items()
    }


@pytest.mark.parametrize("method", ["nlora", "ilora"])
def test_two_processes_match_one_at_the_same_global_batch(method, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    single = subprocess.run([sys.executable, str(script), method, str(tmp_path / "one"), "8"],
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]  # fmt: skip
    double = subprocess.run([*launcher, str(script), method, str(tmp_path / "two"), "4"],
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]

    one, two = saved_tensors(tmp_path / "one" / "final"), saved_tensors(tmp_path / "two" / "final")
    assert one.keys() == two.keys() and one
    for key in one:  # adapters, slow learner and replay buffer
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-5, msg=key)
    # both ranks finished with the same buffer and the one-process accuracy matrix, each scoring half of the rows
    single, ranks = (json.loads((tmp_path / "one" / "rank0.done").read_text()),
                     [json.loads((tmp_path / "two" / f"rank{r}.done").read_text()) for r in (0, 1)])  # fmt: skip
    assert ranks[0]["buffer"] == ranks[1]["buffer"] == single["buffer"]
    assert ranks[0]["matrix"] == ranks[1]["matrix"] == single["matrix"]
    assert len(ranks[0]["scored_rows"]) == len(ranks[1]["scored_rows"]) == len(single["scored_rows"]) // 2 > 0
    assert sorted(ranks[0]["scored_rows"] + ranks[1]["scored_rows"]) == sorted(single["scored_rows"])
    # only rank 0 wrote the run's folders
    assert not list((tmp_path / "two").glob(".*staging*"))
