"""Peak extra memory and time of N-LoRA's collision penalty (value + backward) at LLaMA-7B q/v shapes.

Compares ``peft_continual.regularizers.delta_w_l1`` (row chunks, custom autograd) with naive autograd on the
materialised update, ``sum_m |s * B_m @ A_m|`` computed in fp32 (the same maths, accumulated in fp32 as the chunked
version does). Default: 64 modules of 4096 x 4096, r = 8, s = 32 / 8, fp32 and bf16 factors.

Memory: each (variant, dtype, allocator setting) runs in a fresh subprocess that allocates the factors, warms the
code path on a tiny shape (one-off library initialisation is not the penalty's cost), resets the kernel's peak-RSS
counter (``/proc/self/clear_refs``), computes value and backward ``--calls`` times (as successive training steps
would), and reports ``VmHWM - VmRSS`` at the reset after the first and after the last call; gradients of the
factors are included. Torch has no CPU allocator statistics and tracemalloc does not see its allocations, so two
allocator settings are measured:

- ``live``: ``MALLOC_MMAP_THRESHOLD_`` pinned at 128 KiB, so glibc serves every large block with mmap and returns it
  on free: resident memory then follows the bytes of live tensors (the penalty's own demand);
- ``glibc default``: the dynamic mmap threshold, what a training process gets; freed blocks below 32 MiB stay in
  the heap and fragmentation can make resident memory grow beyond the live bytes.

Time: one process, one torch thread, the variants interleaved in shuffled order for several repeats on a subset
of the modules; medians of CPU time and their ratio (the CPU is shared with other work).

    python benchmarks/regularizer_memory.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import subprocess
import sys
import time

import torch

from common import environment, markdown_table, quartiles, write_json
from peft_continual.regularizers import delta_w_l1

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ALLOCATORS = {"live": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}, "glibc default": {}}
MiB = 2**20


def factors(modules: int, d_out: int, d_in: int, r: int, dtype: torch.dtype, seed: int = 0):
    """Trained-looking LoRA factors (B non-zero), leaf tensors that require grad."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(modules):
        A = (torch.randn(r, d_in, generator=g) / d_in**0.5).to(dtype).requires_grad_()
        B = (torch.randn(d_out, r, generator=g) * 1e-3).to(dtype).requires_grad_()
        pairs.append((A, B))
    return pairs


def chunked(pairs, scaling: float) -> torch.Tensor:
    return torch.stack([delta_w_l1(A, B, scaling) for A, B in pairs]).sum()


def naive(pairs, scaling: float) -> torch.Tensor:
    """What autograd does with dW materialised: keeps every module's dW for the backward of abs."""
    return torch.stack([(scaling * (B.float() @ A.float())).abs().sum() for A, B in pairs]).sum()


VARIANTS = {"chunked": chunked, "naive": naive}


def value_and_backward(fn, pairs, scaling: float) -> float:
    for A, B in pairs:
        A.grad = B.grad = None
    value = fn(pairs, scaling)
    value.backward()
    return value.item()


def rss_kib() -> dict[str, int]:
    status = open("/proc/self/status").read()
    return {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}


def child(variant: str, dtype: str, modules: int, d: int, r: int, calls: int) -> None:
    """Run in a fresh process: print the penalty's peak extra resident memory (after 1 and after all calls) as JSON."""
    torch.set_num_threads(1)
    fn, scaling = VARIANTS[variant], 32 / r
    value_and_backward(fn, factors(1, 64, 64, r, DTYPES[dtype]), scaling)  # one-off library initialisation
    pairs = factors(modules, d, d, r, DTYPES[dtype])
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    before = rss_kib()["VmRSS"]
    peaks = []
    for _ in range(calls):
        value_and_backward(fn, pairs, scaling)
        peaks.append((rss_kib()["VmHWM"] - before) / 1024)
    print(json.dumps({"peak_extra_mib_first_call": peaks[0], "peak_extra_mib": peaks[-1], "calls": calls, "peaks_mib": peaks,
                      "factors_mib": sum(A.nbytes + B.nbytes for A, B in pairs) / MiB}))  # fmt: skip


def measure_memory(variant: str, dtype: str, modules: int, d: int, r: int, calls: int, allocator: str) -> dict:
    command = [sys.executable, __file__, "--child", variant, dtype, str(modules), "--dim", str(d), "--rank", str(r),
               "--calls", str(calls)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | ALLOCATORS[allocator]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_time(dtype: str, modules: int, d: int, r: int, repeats: int, seed: int) -> dict:
    """Interleaved repeats of value + backward on ``modules`` modules; CPU-time medians, and agreement of results."""
    torch.set_num_threads(1)
    pairs, scaling = factors(modules, d, d, r, DTYPES[dtype]), 32 / r
    seconds = {name: [] for name in VARIANTS}
    values, grads = {}, {}
    order, rng = list(VARIANTS), random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start = time.process_time()
            values[name] = value_and_backward(VARIANTS[name], pairs, scaling)
            seconds[name].append(time.process_time() - start)
            grads[name] = [g.grad.float().clone() for pair in pairs for g in pair]
    grad_error = max(((a - b).norm() / b.norm()).item() for a, b in zip(grads["chunked"], grads["naive"]))
    medians = {name: quartiles(s)[1] for name, s in seconds.items()}
    return {"modules": modules, "cpu_s": seconds, "median_cpu_s": medians,
            "ratio_chunked_to_naive": quartiles([c / n for c, n in zip(seconds["chunked"], seconds["naive"])])[1],
            "value_relative_error": abs(values["chunked"] - values["naive"]) / abs(values["naive"]),
            "max_grad_relative_error": grad_error}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=64, help="adapted modules (LLaMA-7B q/v: 2 x 32 layers)")
    parser.add_argument("--naive-modules", type=int, default=64, help="modules for naive memory; fewer: extrapolated")
    parser.add_argument("--time-modules", type=int, default=8, help="modules in the timing runs (time is per module)")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3, help="value+backward calls per memory subprocess")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-mib", type=float, default=128.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="regularizer_memory.json")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "DTYPE", "MODULES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, dtype, modules = args.child
        return child(variant, dtype, int(modules), args.dim, args.rank, args.calls)

    results = {}
    for dtype in DTYPES:
        memory = {}
        for allocator in ALLOCATORS:
            for name in VARIANTS:
                modules = args.naive_modules if name == "naive" else args.modules
                m = measure_memory(name, dtype, modules, args.dim, args.rank, args.calls, allocator)
                if modules != args.modules:  # linear in the number of modules: every module keeps its own dW
                    m = {**m, "extrapolated_from_modules": modules, "peak_extra_mib": m["peak_extra_mib"] * args.modules / modules,
                         "peak_extra_mib_first_call": m["peak_extra_mib_first_call"] * args.modules / modules}  # fmt: skip
                memory[f"{name} / {allocator}"] = m
                print(f"{dtype} {name} / {allocator}: {m['peak_extra_mib']:.1f} MiB", flush=True)
        timing = measure_time(dtype, args.time_modules, args.dim, args.rank, args.repeats, args.seed)
        verdicts = {a: memory[f"chunked / {a}"]["peak_extra_mib"] <= args.target_mib for a in ALLOCATORS}
        results[dtype] = {"memory": memory, "time": timing, "target": f"chunked peak extra <= {args.target_mib:g} MiB",
                          "met": verdicts}  # fmt: skip

    path = write_json(args.output, {"environment": environment(), "settings": vars(args), "results": results})
    print(render(results, args))
    print(f"\nwritten {path}")


def render(results: dict, args) -> str:
    rows = []
    for dtype, r in results.items():
        t = r["time"]
        for name in VARIANTS:
            live, default = r["memory"][f"{name} / live"], r["memory"][f"{name} / glibc default"]
            note = f" (extrapolated from {live['extrapolated_from_modules']})" if "extrapolated_from_modules" in live else ""
            verdict = ", ".join(f"{a}: {'met' if ok else 'MISSED'}" for a, ok in r["met"].items()) if name == "chunked" else ""
            rows.append([dtype, name, f"{live['factors_mib']:.1f}", f"{live['peak_extra_mib']:.1f}{note}",
                         f"{default['peak_extra_mib_first_call']:.1f}", f"{default['peak_extra_mib']:.1f}",
                         f"{1000 * t['median_cpu_s'][name] / t['modules']:.0f}",
                         f"{t['ratio_chunked_to_naive']:.3f}" if name == "chunked" else "", verdict])  # fmt: skip
    header = ["factors", "variant", "factor MiB", f"live peak extra MiB ({args.modules} modules, {args.calls} calls)",
              "glibc default: peak extra MiB, 1st call", f"glibc default: after {args.calls} calls",
              "CPU ms / module (median)", "time chunked / naive", f"target <= {args.target_mib:g} MiB"]  # fmt: skip
    errors = "; ".join(f"{d}: value rel. err {r['time']['value_relative_error']:.1e}, "
                       f"grad rel. err {r['time']['max_grad_relative_error']:.1e}" for d, r in results.items())  # fmt: skip
    return markdown_table(header, rows) + f"\n\nchunked vs naive agreement: {errors}"


if __name__ == "__main__":
    main()
