"""GPU check (not collected by pytest): DeepSpeed ZeRO-3 on 2+ GPUs ends with the adapters of one unsharded GPU.

ZeRO-3 shards every parameter, LoRA factors included; the N-LoRA/O-LoRA penalties, the shape checks and I-LoRA's
EMA gather them with peft's ``gather_params_ctx`` (collectively, on every rank), and the replay and consistency
forwards run through the DeepSpeed engine. CPU machines cannot run DeepSpeed, so this runs where GPUs are:

    pip install deepspeed
    python tests/gpu/check_zero3.py ref                                     # one GPU, no sharding: the reference
    torchrun --nproc_per_node 2 tests/gpu/check_zero3.py zero3 --compare ref   # ZeRO-3 over 2 GPUs, same global batch

Each method runs two tasks; the check fails when a saved tensor differs by more than 1e-4 or the accuracy matrices
differ. (FSDP is refused by ContinualTrainer before training; see the README.)
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_tokenizer, memorised_task, tiny_model, training_args  # noqa: E402
from peft import get_peft_model  # noqa: E402

from peft_continual import ContinualTrainer, ILoraConfig, NLoraConfig, OLoraConfig  # noqa: E402

GLOBAL_BATCH = 8


def config(method, targets):
    common = dict(r=4, lora_alpha=8, target_modules=targets)
    return {
        "nlora": NLoraConfig(**common, collision_lambda=0.5),
        "olora": OLoraConfig(**common, orthogonal_lambda=0.5, l2_lambda=0.1),
        "ilora": ILoraConfig(**common, replay_buffer_size=6, ema_decay=0.8),
    }[method]


def run(method: str, out: Path) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokenizer = make_tokenizer()
    model, targets = tiny_model("llama", tokenizer)
    zero3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto",
             "gradient_accumulation_steps": "auto", "train_batch_size": "auto"}  # fmt: skip
    args = training_args(out / method, use_cpu=False, num_train_epochs=2, learning_rate=1e-2,
                         per_device_train_batch_size=GLOBAL_BATCH // world, deepspeed=zero3 if world > 1 else None)  # fmt: skip
    trainer = ContinualTrainer(model=get_peft_model(model, config(method, targets)), args=args,
                               processing_class=tokenizer, max_source_length=64)  # fmt: skip
    trainer.train_continual([memorised_task(name, 8) for name in ("colors", "animals")])
    trainer.save_continual(str(out / method / "final"))
    return {"matrix": trainer.result.accuracy_matrix, "rank": args.process_index}


def saved(folder: Path) -> dict:
    return {f"{f.relative_to(folder)}:{k}": v for f in sorted(folder.rglob("*.safetensors")) for k, v in load_file(str(f)).items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path, help="the reference folder written by a one-GPU run")
    parser.add_argument("--methods", nargs="+", default=["nlora", "olora", "ilora"])
    options = parser.parse_args()
    failures = []
    for method in options.methods:
        result = run(method, options.out)
        (options.out / method / f"matrix{result['rank']}.json").write_text(json.dumps(result["matrix"]))
        if options.compare is None or result["rank"] != 0:
            continue
        expected, actual = saved(options.compare / method / "final"), saved(options.out / method / "final")
        if expected.keys() != actual.keys():
            failures.append(f"{method}: saved tensors differ in names")
        for key in expected.keys() & actual.keys():
            if not torch.allclose(actual[key].float(), expected[key].float(), rtol=1e-4, atol=1e-4):
                failures.append(f"{method}: {key} differs by {(actual[key].float() - expected[key].float()).abs().max():.2e}")
        if json.loads((options.compare / method / "matrix0.json").read_text()) != result["matrix"]:
            failures.append(f"{method}: accuracy matrix differs")
    if failures:
        raise SystemExit("ZeRO-3 check FAILED:\n" + "\n".join(failures))
    print("ZeRO-3 check passed" if options.compare else f"reference written to {options.out}")


if __name__ == "__main__":
    main()
