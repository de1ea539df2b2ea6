"""How close the KL of a run that merged into its base (OSF) comes to the exact KL it cannot measure any more.

Once adapters are merged into the base its distributions are gone, so the retention suite estimates the KL from a
sketch of them kept at the base's measurement (:func:`peft_continual.general_ability.sketch_distribution`): the
``REFERENCE_TOP_K`` most likely tokens at each position of the base's chat answers and ``REFERENCE_TAIL_SAMPLES``
tokens drawn from the rest (:func:`~peft_continual.general_ability.kl_from_sketch`). This measures, on
SmolLM2-135M-Instruct and tuned adapters that did not merge (so the exact KL is at hand), per prompt of the quick
suite's chat part: the exact KL, the sketch's estimate (three draws), and what the top tokens alone would give.

    python benchmarks/kl_sketch.py ADAPTER [ADAPTER ...] --chat-template on --output kl_sketch.json

``ADAPTER``: plain-peft adapter folders (a saved run's root or one of its adapters). Writes ``results/<output>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from common import environment, markdown_table, write_json
from peft_continual.demo_model import load_smollm2
from peft_continual.evaluation import _batches
from peft_continual.general_ability import (REFERENCE_TAIL_SAMPLES, REFERENCE_TOP_K, SHORT_PROMPT_BATCH, _answer_logp,
                                            _encode_prompts, evaluate_general_ability, kl_from_sketch, load_suite,
                                            sketch_distribution)  # fmt: skip
from peft_continual.retention import GENERAL_DEFAULT_ITEMS, GeneralRetention

DRAWS = 3


def measure(model, tokenizer, chat: bool) -> dict[str, list]:
    """Per prompt: the exact KL(base || tuned), the sketch's estimate for each draw, the top tokens' part alone, and
    the base's mass in its top tokens (means over the answer's positions)."""
    with model.disable_adapter():  # the base's own greedy answers, as the suite's reference takes them
        reference = evaluate_general_ability(model, tokenizer, parts=("chat",), limit=GENERAL_DEFAULT_ITEMS,
                                             max_new_tokens=GeneralRetention.QUICK["max_new_tokens"],
                                             chat_template="on" if chat else "off", batch_size=SHORT_PROMPT_BATCH)  # fmt: skip
    prompts, _ = _encode_prompts(tokenizer, load_suite(GENERAL_DEFAULT_ITEMS).chat, chat)
    answers = reference.chat_answer_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {"exact": [], "sketch": [[] for _ in range(DRAWS)], "top_only": [], "top_mass": []}
    generators = [torch.Generator().manual_seed(draw) for draw in range(DRAWS)]
    for rows in _batches(len(prompts), SHORT_PROMPT_BATCH):
        batch_prompts, batch_answers = [prompts[i] for i in rows], [answers[i] for i in rows]
        tuned = _answer_logp(model, batch_prompts, batch_answers, pad)
        with model.disable_adapter():
            base = _answer_logp(model, batch_prompts, batch_answers, pad)
        for b, t in zip(base, tuned):
            out["exact"].append(float((b.exp() * (b - t)).sum(-1).mean().clamp(min=0)))  # as the suite reports them
            for draw, generator in enumerate(generators):
                sketch = sketch_distribution(b, generator)
                out["sketch"][draw].append(float(kl_from_sketch(sketch, t).mean().clamp(min=0)))
            top = {**sketch, "tail_ids": sketch["tail_ids"][:, :0], "tail_logp": sketch["tail_logp"][:, :0]}
            out["top_only"].append(float(kl_from_sketch(top, t).mean()))
            out["top_mass"].append(float(sketch["top_logp"].exp().sum(-1).mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", type=Path, help="plain-peft adapter folders")
    parser.add_argument("--chat-template", choices=("on", "off"), default="on")
    parser.add_argument("--cache-dir", default="/work/cache/smollm2", help="converted SmolLM2 checkpoint")
    parser.add_argument("--output", default="kl_sketch.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    base, tokenizer = load_smollm2(cache_dir=args.cache_dir)
    rows, runs = [], {}
    for path in args.adapters:
        model = PeftModel.from_pretrained(base, str(path)).eval()
        with torch.no_grad():
            runs[str(path)] = run = measure(model, tokenizer, args.chat_template == "on")
        base = model.unload()  # the same base for the next adapter
        exact = np.array(run["exact"])
        sketch = np.array(run["sketch"])
        rows.append([path.name, f"{exact.mean():.3f}",
                     " / ".join(f"{s.mean():.3f}" for s in sketch), f"{100 * np.abs(sketch - exact).mean() / exact.mean():.1f} %",
                     f"{np.mean(run['top_only']):.3f}", f"{100 * np.mean(run['top_mass']):.1f} %"])  # fmt: skip
    print(f"top {REFERENCE_TOP_K} tokens and {REFERENCE_TAIL_SAMPLES} tail draws per position; chat template "
          f"{args.chat_template}; means over the quick suite's {GENERAL_DEFAULT_ITEMS} chat prompts")
    print(markdown_table(["adapter", "exact KL", f"sketch ({DRAWS} draws)", "per-prompt error / exact",
                          "top tokens alone", "base mass in top tokens"], rows))  # fmt: skip
    write_json(args.output, {"chat_template": args.chat_template, "top_k": REFERENCE_TOP_K,
                             "tail_samples": REFERENCE_TAIL_SAMPLES, "runs": runs, "environment": environment()})  # fmt: skip


if __name__ == "__main__":
    main()
