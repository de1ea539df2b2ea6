"""How hard one collision lambda pulls at SmolLM2-135M vs 7B/8B shapes, under each penalty normalisation.

The question (issue: "one lambda that transfers across model sizes"): the N-LoRA penalty and the task loss compete
on the LoRA factors, so what a lambda does is the ratio of the penalty's gradient to the task loss's gradient
there, module by module. With the plain sum the penalty's gradient on module m is ``s * sign(dW_m) @ A_m^T`` (and
the A-side twin), whose size grows with the module's shape; a normalisation divides module m's l1 by a factor
c_m, and the ratio becomes ``ratio_sum_m / c_m``. This script measures ratio_sum per module and module kind on
models of each shape (same LoRA, same random-token batches, a few task-loss steps first so that dW != 0 and is
shaped by the task gradient, as it is when the penalty acts), then reports the ratio under each candidate c_m:

* ``mean``   c = number of entries of all adapted modules (the old default: depends on depth and width)
* ``module_mean`` c = d_out * d_in of the module
* ``sqrt``   c = sqrt(d_out * d_in)
* ``rms_fan`` c = sqrt(d_out) * d_in

Random-initialised models stand in for the pretrained 7B/8B ones (no weights here); pretrained SmolLM2 is measured
beside its random-initialised twin to show how much pretraining moves the ratio. Depth is cut for speed (the
per-module ratios do not depend on it; ``mean`` is computed for the full depth).

    python benchmarks/collision_scale.py
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from common import environment, markdown_table, write_json
from peft_continual.adapters import adapter_factors
from peft_continual.regularizers import delta_w_l1

SHAPES = {  # name: (hidden, intermediate, heads, kv heads, vocab, full depth)
    "SmolLM2-135M": (576, 1536, 9, 3, 49152, 30),
    "Llama-2-7B": (4096, 11008, 32, 32, 32000, 32),
    "Llama-3-8B": (4096, 14336, 32, 8, 128256, 32),
}
NORMALISATIONS = {
    "sum": lambda d_out, d_in, total: 1.0,
    "mean": lambda d_out, d_in, total: total,
    "module_mean": lambda d_out, d_in, total: d_out * d_in,
    "sqrt": lambda d_out, d_in, total: math.sqrt(d_out * d_in),
    "rms_fan": lambda d_out, d_in, total: math.sqrt(d_out) * d_in,
}


def build(name: str, layers: int, pretrained_cache=None):
    if pretrained_cache is not None:
        from peft_continual.demo_model import load_smollm2

        return load_smollm2(pretrained_cache)[0]
    hidden, inter, heads, kv, vocab, _ = SHAPES[name]
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=vocab, num_hidden_layers=layers,
                         initializer_range=0.02, tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(config)


def ratios(model, steps: int, batch: int, length: int, answer: int, seed: int) -> dict[str, list[tuple]]:
    """Per module kind: (d_out, d_in, ||grad penalty(sum)|| / ||grad task||) on the module's A and B."""
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(seed)

    def batch_loss():
        ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=g)
        labels = torch.full_like(ids, -100)
        labels[:, -answer:] = ids[:, -answer:]
        return model(input_ids=ids, labels=labels).loss

    for _ in range(steps):  # dW != 0, shaped by the task gradient
        optimizer.zero_grad()
        batch_loss().backward()
        optimizer.step()
    factors = adapter_factors(model, "default")
    task_grads = torch.autograd.grad(batch_loss(), [p for f in factors for p in (f.A, f.B)])
    out: dict[str, list[tuple]] = {}
    for i, f in enumerate(factors):
        pen = torch.autograd.grad(delta_w_l1(f.A, f.B, f.scaling), [f.A, f.B])
        pen_norm = math.sqrt(sum(float(t.pow(2).sum()) for t in pen))
        task_norm = math.sqrt(float(task_grads[2 * i].pow(2).sum() + task_grads[2 * i + 1].pow(2).sum()))
        kind = f.module_name.rsplit(".", 1)[-1]
        out.setdefault(kind, []).append((f.B.shape[0], f.A.shape[1], pen_norm / task_norm))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--answer", type=int, default=8)
    parser.add_argument("--model-cache", default=None, help="converted SmolLM2 checkpoint (adds the pretrained row)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)

    runs = [(name, None) for name in SHAPES]
    if args.model_cache:
        runs.insert(1, ("SmolLM2-135M", args.model_cache))
    rows, measured = [], {}
    for name, cache in runs:
        label = f"{name} ({'pretrained' if cache else 'random init'})"
        per_kind = ratios(build(name, args.layers, cache), args.steps, args.batch, args.length, args.answer, seed=0)
        hidden, _, heads, kv, _, depth = SHAPES[name]
        total = depth * sum(d_out * d_in for d_out, d_in, _ in [v[0] for v in per_kind.values()])
        measured[label] = {}
        for kind, values in per_kind.items():
            d_out, d_in = values[0][:2]
            ratio_sum = statistics.median(r for *_, r in values)
            scaled = {norm: ratio_sum / c(d_out, d_in, total) for norm, c in NORMALISATIONS.items()}
            measured[label][kind] = {"d_out": d_out, "d_in": d_in, "ratio": scaled}
            rows.append([label, kind, f"{d_out}x{d_in}"] + [f"{v:.3g}" for v in scaled.values()])
            print(rows[-1], flush=True)
    reference = measured[f"SmolLM2-135M ({'pretrained' if args.model_cache else 'random init'})"]
    spread = {}
    for norm in NORMALISATIONS:  # how far the 7B/8B ratio drifts from SmolLM2's, worst module kind
        drift = [measured[label][kind]["ratio"][norm] / reference[kind]["ratio"][norm]
                 for label in measured if not label.startswith("SmolLM2") for kind in measured[label]]  # fmt: skip
        spread[norm] = [round(min(drift), 3), round(max(drift), 3)]
    table = markdown_table(["model", "module", "shape"] + [f"ratio ({n})" for n in NORMALISATIONS], rows)
    payload = {"command": "python benchmarks/collision_scale.py" + (" --model-cache ..." if args.model_cache else ""),
               "settings": vars(args), "measured": measured, "drift_vs_smollm2_min_max": spread, "table": table,
               "environment": environment()}  # fmt: skip
    path = write_json("collision_scale.json", payload)
    print(table)
    print("7B/8B ratio / SmolLM2 ratio (min, max over module kinds):", spread, "->", path)


if __name__ == "__main__":
    main()
