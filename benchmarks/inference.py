"""Evaluation throughput and inference latency (SmolLM2-135M-Instruct, fp32, CPU, one torch thread).

1. **Scoring a task.** The same test examples scored three ways: label ranking as ``evaluate_task`` does it (each
   prompt runs once, its KV cache is repeated over the options), label ranking with the prompt re-run for every
   option (the straightforward way, computed here independently: it must pick the same labels), and greedy
   generation with exact match (the papers' protocol). Reported: examples per CPU-second and the ratio to the
   shared-prompt ranking. Then both protocols at once, as the benchmark scores every run: ``evaluate_protocols``
   (one prefill of each prompt batch serves both) against ranking and generating one after the other (it must
   give the same answers).
2. **Serving the result.** Latency of one request (greedy generation of ``--new-tokens`` tokens after a prompt of
   ``--prompt-len`` tokens, batch 1) and of a prefill of ``--batch-size`` prompts, for the base model, the PeftModel
   with ``--adapters`` task adapters active (what IncLoRA/N-LoRA/O-LoRA train: every earlier adapter stays in the
   forward) and the same adapters merged into the base (``merge_and_unload``; merged outputs are checked against
   the unmerged ones). Ratios to the base model.

Each round runs every variant once in a shuffled order and divides by the reference from the same round; medians
over rounds are reported (the CPU is shared, so only same-round ratios of CPU time are trusted).

    python benchmarks/inference.py
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers.utils import logging as hf_logging

from common import environment, markdown_table, quartiles, run_rounds, write_json
from peft_continual import evaluate_protocols, evaluate_task, load_continual_tasks
from peft_continual.demo_model import load_smollm2
from peft_continual.tasks import PromptEncoder

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def rank_by_full_sequences(model, tokenizer, task, max_source_length: int) -> list[str]:
    """Label ranking without sharing the prompt: every (prompt, option) pair is its own sequence."""
    encoder = PromptEncoder(tokenizer, max_source_length)  # the reference prompt, as evaluate_task's below
    predictions = []
    for row in task.eval:
        text, prompt = encoder.prompt(task, row)
        options = [encoder.target(task, {"label": label}, text, prompt) for label in task.labels]
        scores = []
        for option in options:
            ids = torch.tensor([prompt + option])
            logp = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
            scores.append(logp.gather(-1, torch.tensor(option).unsqueeze(-1)).sum().item())
        predictions.append(task.labels[max(range(len(options)), key=scores.__getitem__)])
    return predictions


def ratio_stats(times: dict[str, list[float]], reference: str) -> dict[str, dict]:
    out = {}
    for name, values in times.items():
        q1, med, q3 = quartiles([t / r for t, r in zip(values, times[reference])])
        out[name] = {"median_cpu_s": quartiles(values)[1], "ratio": med, "ratio_q1": q1, "ratio_q3": q3}
    return out


def scoring(model, tokenizer, args) -> dict:
    tasks = load_continual_tasks(args.tasks, HERE.parent / args.data_dir, max_eval_samples=args.eval_examples,
                                 max_train_samples=1, seed=args.seed)  # fmt: skip
    results = {}
    for task in tasks:
        run = {
            "rank, shared prompt": lambda: evaluate_task(model, tokenizer, task, method="rank", chat_template="off",
                                                         max_source_length=args.max_source_length, batch_size=8),
            "rank, prompt per option": lambda: rank_by_full_sequences(model, tokenizer, task, args.max_source_length),
            "generate": lambda: evaluate_task(model, tokenizer, task, method="generate", chat_template="off",
                                              max_source_length=args.max_source_length, batch_size=8),
            "rank + generate, one prefill": lambda: evaluate_protocols(
                model, tokenizer, task, ["generate", "rank"], chat_template="off",
                max_source_length=args.max_source_length, batch_size=8),
        }  # fmt: skip
        shared, full, generated, both = (run[name]() for name in run)
        if [both["rank"].predictions, both["generate"].predictions] != [shared.predictions, generated.predictions]:
            raise SystemExit(f"{task.name}: scoring both protocols from one prefill changed the answers")
        # the calls above were the warm-up
        times = run_rounds(run, {}, args.rounds, warmup=0, seed=args.seed)[1]
        stats = ratio_stats(times, "rank, shared prompt")
        for name, s in stats.items():
            s["examples_per_cpu_s"] = len(task.eval) / s["median_cpu_s"]
        separately = [r + g for r, g in zip(times["rank, shared prompt"], times["generate"])]  # same round each
        joint = ratio_stats({"joint": times["rank + generate, one prefill"], "separately": separately}, "separately")
        results[task.name] = {"options": len(task.labels), "examples": len(task.eval), "variants": stats,
                              "both_protocols_one_prefill_vs_separately": joint["joint"],
                              "rank_predictions_agree": sum(a == b for a, b in zip(shared.predictions, full)) / len(full),
                              "rank_accuracy": shared.accuracy, "generate_accuracy": generated.accuracy}  # fmt: skip
    return results


def with_task_adapters(base, config: LoraConfig, count: int):
    """A copy of ``base`` with ``count`` LoRA adapters, all active, as the task-adapter methods keep them."""
    torch.manual_seed(0)  # the same random adapters every time
    peft_model = get_peft_model(copy.deepcopy(base), config, adapter_name="task_1")
    for i in range(2, count + 1):
        peft_model.add_adapter(f"task_{i}", config)
    peft_model.base_model.set_adapter([f"task_{i}" for i in range(1, count + 1)])
    return peft_model.eval()


def serving(base, args) -> dict:
    torch.manual_seed(args.seed)
    prompt = torch.randint(0, base.config.vocab_size, (1, args.prompt_len))
    batch = torch.randint(0, base.config.vocab_size, (args.batch_size, args.prompt_len))
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = with_task_adapters(base, config, args.adapters)
    with torch.no_grad():
        unmerged_logits = peft_model(batch).logits
    merged = with_task_adapters(base, config, args.adapters).merge_and_unload()
    with torch.no_grad():
        merged_error = (merged(batch).logits - unmerged_logits).abs().max().item()
    models = {"base": base, f"{args.adapters} adapters, unmerged": peft_model.eval(), "merged": merged.eval()}

    def generate(model):
        return lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                      min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)  # fmt: skip

    def prefill(model):
        return lambda: model(batch, logits_to_keep=1)

    with torch.no_grad():
        request, prefills = (
            ratio_stats(run_rounds({n: job(m) for n, m in models.items()}, {}, args.rounds, 1, args.seed)[1], "base")
            for job in (generate, prefill)
        )
    return {"request": request, "prefill": prefills, "merged_max_abs_logit_error": merged_error}


def render(payload: dict) -> str:
    parts = []
    for task, r in payload["scoring"].items():
        rows = [[name, f"{s['examples_per_cpu_s']:.2f}", f"{s['ratio']:.2f} ({s['ratio_q1']:.2f}–{s['ratio_q3']:.2f})"]
                for name, s in r["variants"].items()]  # fmt: skip
        parts.append(f"{task} ({r['options']} options, {r['examples']} examples; ranking agrees "
                     f"{100 * r['rank_predictions_agree']:.0f} %; accuracy rank {100 * r['rank_accuracy']:.0f} %, "
                     f"generate {100 * r['generate_accuracy']:.0f} %)\n"
                     + markdown_table(["scoring", "examples / CPU s", "CPU time / shared-prompt ranking"], rows)
                     + "\n\nboth protocols from one prefill / rank then generate: {ratio:.2f} ({ratio_q1:.2f}–{ratio_q3:.2f})"
                     .format(**r["both_protocols_one_prefill_vs_separately"]))  # fmt: skip
    s = payload["settings"]
    for kind, label in (("request", f"one request: {s['prompt_len']} prompt + {s['new_tokens']} generated tokens"),
                        ("prefill", f"prefill: {s['batch_size']} x {s['prompt_len']} tokens")):  # fmt: skip
        rows = [[name, f"{1000 * v['median_cpu_s']:.0f}", f"{v['ratio']:.3f} ({v['ratio_q1']:.3f}–{v['ratio_q3']:.3f})"]
                for name, v in payload["serving"][kind].items()]  # fmt: skip
        parts.append(label + "\n" + markdown_table(["model", "CPU ms (median)", "ratio to base"], rows))
    parts.append(f"merged vs unmerged: max |logit difference| {payload['serving']['merged_max_abs_logit_error']:.2e}")
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default="/work/cache/smollm2", help="converted SmolLM2 checkpoint")
    parser.add_argument("--data-dir", default="../shared/data/cl_benchmark")
    parser.add_argument("--tasks", nargs="+", default=["dbpedia", "agnews"])
    parser.add_argument("--eval-examples", type=int, default=8)
    parser.add_argument("--max-source-length", type=int, default=96)
    parser.add_argument("--adapters", type=int, default=4, help="task adapters active in the unmerged model")
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="inference.json")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    if not (HERE.parent / args.data_dir).is_dir():
        raise SystemExit(f"benchmark data not found at {HERE.parent / args.data_dir}; pass --data-dir")
    base, tokenizer = load_smollm2(cache_dir=args.cache_dir)
    base.eval()
    payload = {"environment": environment(), "settings": vars(args)}
    payload["scoring"] = scoring(base, tokenizer, args)
    payload["serving"] = serving(base, args)
    path = write_json(args.output, payload)
    print("\n" + render(payload) + f"\n\nwritten {path}")


if __name__ == "__main__":
    main()
