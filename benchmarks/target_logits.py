"""Training-step time with the LM head on target positions only vs on every position (SmolLM2-135M-Instruct).

One step = forward with the model's own causal-LM loss (``num_items_in_batch`` as Trainer passes it), backward
and an AdamW step on LoRA q/v (r = 8), at batch 8 x 128 tokens whose last ``--answer`` tokens are the target (a
label and EOS, as in the CL benchmark). Both variants share the model and alternate in shuffled order every round;
the ratio of medians uses process CPU time, which other processes' time-slicing does not inflate.

    python benchmarks/target_logits.py --rounds 8
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model
from transformers.utils import logging as hf_logging

from common import environment, quartiles, run_rounds, write_json
from peft_continual.demo_model import load_smollm2
from peft_continual.target_logits import with_target_logits
from peft_continual.tasks import IGNORE_INDEX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--answer", type=int, default=3, help="target tokens at the end of each row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-cache", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()

    model, _ = load_smollm2(cache_dir=args.model_cache)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length), generator=g)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -args.answer :] = ids[:, -args.answer :]
    full = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    kept = with_target_logits(full)
    items = torch.tensor(args.batch * args.answer)

    def step(inputs):
        def run():
            optimizer.zero_grad()
            model(**inputs, num_items_in_batch=items).loss.backward()
            optimizer.step()

        return run

    jobs = {"full_logits": step(full), "target_logits": step(kept)}
    wall, cpu = run_rounds(jobs, {}, rounds=args.rounds, warmup=1, seed=0)
    medians = {name: quartiles(values)[1] for name, values in cpu.items()}
    speedup = medians["full_logits"] / medians["target_logits"]
    ratios = sorted(f / t for f, t in zip(cpu["full_logits"], cpu["target_logits"]))
    payload = {
        "what": "LoRA training step on SmolLM2-135M-Instruct: LM head on every position vs on target positions only",
        "command": f"python benchmarks/target_logits.py --rounds {args.rounds}",
        "batch": args.batch, "length": args.length, "answer_tokens": args.answer, "rounds": args.rounds,
        "cpu_seconds_median": medians, "wall_seconds_median": {n: quartiles(v)[1] for n, v in wall.items()},
        "speedup_cpu_median": round(speedup, 3), "per_round_speedup_q1_median_q3": [round(x, 3) for x in quartiles(ratios)],
        "environment": environment(),
    }  # fmt: skip
    path = write_json("target_logits.json", payload)
    print(f"target-only head: {speedup:.2f}x faster per step (CPU-time medians) -> {path}")


if __name__ == "__main__":
    main()
