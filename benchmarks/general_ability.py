"""What saved continual runs did to SmolLM2-135M-Instruct's general ability (the built-in suite, offline).

The base model is evaluated once on :mod:`peft_continual.general_ability`'s suite (instructions, facts, chat
prompts); each run's root adapter (a ``final/`` folder that plain peft loads) is then evaluated against it: each
part's score, its change from the base with a 95 % paired interval over the items, KL and agreement on the base's
own chat answers, and the leak of the run's task labels into general answers.

    python benchmarks/general_ability.py out/continual_demo/seqlora/final out/continual_demo/replay/final \
        --output general_ability_demo.json

Writes ``results/<output>`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel

from common import environment, markdown_table, write_json
from peft_continual.demo_model import load_smollm2
from peft_continual.general_ability import drift, evaluate_general_ability

PARTS = ("instructions", "instructions_loose", "facts", "leak", "kl", "agreement")


def run_labels(folder: Path) -> list[str]:
    """The labels of the run's classification tasks (what a leaking answer would say)."""
    state = json.loads((folder / "continual_state.json").read_text(encoding="utf-8"))
    return sorted({label for task in state["tasks"] for label in task["labels"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="saved runs' final/ folders")
    parser.add_argument("--cache-dir", default="/work/cache/smollm2", help="converted SmolLM2 checkpoint")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each part (quick checks)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="general_ability.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base_model, tokenizer = load_smollm2(cache_dir=args.cache_dir)
    base = evaluate_general_ability(base_model, tokenizer, limit=args.limit)
    own = base.summary()  # the base has no KL or agreement of its own: 0 and 100 % by definition
    rows, payload = [["base", *(f"{100 * own[p]:.1f}" if p in own else {"kl": "0", "agreement": "100.0"}[p] for p in PARTS)]], {}
    for folder in args.runs:
        name = f"{folder.parent.name}/{folder.name}"
        model = PeftModel.from_pretrained(base_model, str(folder)).eval()
        report = evaluate_general_ability(model, tokenizer, reference=base, labels=run_labels(folder), limit=args.limit)
        changes = drift(report, base)
        cells = []
        for part in PARTS:
            d = changes[part]
            scale = 100  # points; KL stays in nats per token
            cells.append(f"{d.estimate:.2f} [{d.low:.2f}, {d.high:.2f}]" if part == "kl" else
                         f"{scale * report.summary()[part]:.1f} ({scale * d.estimate:+.1f} [{scale * d.low:+.1f}, {scale * d.high:+.1f}])")  # fmt: skip
        rows.append([name, *cells])
        payload[name] = {"summary": report.summary(), "drift": {p: vars(d) for p, d in changes.items()},
                         "labels": report.labels}  # fmt: skip
        base_model = model.unload()  # the same base for the next run
    table = markdown_table(["model", *PARTS], rows)
    path = write_json(args.output, {"environment": environment(), "settings": {**vars(args), "runs": [str(r) for r in args.runs]},
                                    "base": base.summary(), "runs": payload})  # fmt: skip
    print(table + f"\n\nwritten {path}")


if __name__ == "__main__":
    main()
