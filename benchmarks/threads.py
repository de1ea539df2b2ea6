"""Two one-thread jobs side by side, or one two-thread job at a time: which trains more steps per hour here?

The same fixed amount of training (SmolLM2-135M-Instruct, LoRA r=8 on q/v, fp32, batch 8 x 128 tokens, fused
AdamW as Trainer's default) runs as (a) one job with 2 torch threads, twice in sequence, and (b) two jobs with 1
thread each at the same time. Each job is its own process (as the plan runner starts them): it loads the model,
takes one untimed warm-up step, waits at a file barrier until its sibling is ready too, then times ``--steps``
steps. Throughput is steps over the wall time from the first timed step to the last; the ratio (b)/(a) > 1
says run the suite as one-thread jobs side by side. The machine is shared, so the load average before and
after each phase is recorded with the result.

    python benchmarks/threads.py --steps 5      # -> results/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import environment, write_json

HERE = Path(__file__).resolve().parent


def worker(args) -> None:
    """One job: ``--steps`` timed LoRA steps after a warm-up, starting once every sibling is ready."""
    import torch
    from peft import LoraConfig, get_peft_model

    from peft_continual.demo_model import load_smollm2

    torch.set_num_threads(args.threads)
    model, _ = load_smollm2(cache_dir=args.model_cache)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    generator = torch.Generator().manual_seed(args.index)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length), generator=generator)
    labels = ids.clone()
    labels[:, :-4] = -100  # the loss covers a short answer, as in the CL prompts

    def step():
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    barrier = Path(args.barrier)
    (barrier / f"ready-{args.index}").touch()
    while len(list(barrier.glob("ready-*"))) < args.siblings:
        time.sleep(0.05)
    start, cpu = time.time(), time.process_time()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"start": start, "end": time.time(), "cpu_seconds": time.process_time() - cpu, "step_seconds": times}))


def phase(jobs: int, threads: int, args) -> dict:
    """``jobs`` processes at once, each with ``threads`` threads; their timed windows measured together."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as barrier:
        command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(args.steps),
                   "--batch", str(args.batch), "--length", str(args.length), "--barrier", barrier,
                   "--siblings", str(jobs)] + (["--model-cache", args.model_cache] if args.model_cache else [])  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        procs = [subprocess.Popen(command + ["--index", str(i)], stdout=subprocess.PIPE, text=True, env=env)
                 for i in range(jobs)]  # fmt: skip
        outputs = []
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"worker failed with exit code {proc.returncode}")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(o["end"] for o in outputs) - min(o["start"] for o in outputs)
    return {"jobs": jobs, "threads": threads, "steps": jobs * args.steps, "wall_seconds": round(wall, 2),
            "steps_per_hour": round(3600 * jobs * args.steps / wall, 1),
            "cpu_seconds": [round(o["cpu_seconds"], 2) for o in outputs],
            "step_seconds": [[round(t, 2) for t in o["step_seconds"]] for o in outputs],
            "load_average_before": load_before, "load_average_after": os.getloadavg()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per job")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--model-cache", default=None, help="converted SmolLM2 checkpoint folder")
    parser.add_argument("--output", default="threads.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one job, started by the phases
    for hidden, kind in (("--threads", int), ("--index", int), ("--siblings", int), ("--barrier", str)):
        parser.add_argument(hidden, type=kind, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sequential = [phase(1, 2, args) for _ in range(2)]  # (a) one two-thread job, twice in sequence
    wall_a = sum(p["wall_seconds"] for p in sequential)
    side_by_side = phase(2, 1, args)  # (b) two one-thread jobs at once
    ratio = (2 * args.steps / side_by_side["wall_seconds"]) / (2 * args.steps / wall_a)
    payload = {"settings": {"steps_per_job": args.steps, "batch": args.batch, "length": args.length,
                            "model": "SmolLM2-135M-Instruct, LoRA r=8 q/v, fp32"},
               "results": {"one_two_thread_job_twice": sequential, "two_one_thread_jobs_side_by_side": side_by_side,
                           "throughput_ratio_side_by_side_over_sequential": round(ratio, 3)},
               "environment": environment()}  # fmt: skip
    path = write_json(args.output, payload)
    print(f"(a) 2 threads, twice in sequence: {wall_a:.1f} s for {2 * args.steps} steps; (b) two 1-thread jobs: "
          f"{side_by_side['wall_seconds']:.1f} s; throughput (b)/(a) = {ratio:.2f} -> {path}")  # fmt: skip


if __name__ == "__main__":
    main()
