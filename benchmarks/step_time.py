"""Optimizer-step time of every continual method relative to plain LoRA (SmolLM2-135M-Instruct, fp32, CPU).

Each variant is a PeftModel with its own ContinualTrainer, brought to task k through the method's own hooks
(begin_task/end_task, so earlier adapters are frozen and active, merged, or fill the replay buffer). One timed
step is what Trainer's loop does per optimizer step: ``training_step`` (forward, loss with the method's extra
terms, backward), gradient clipping, fused AdamW (Trainer's default), then ``method.after_optimizer_step``.

The CPU is shared with other work, so absolute times drift: every round runs one step of each variant in a
shuffled order, each variant is divided by its reference (plain LoRA on the same modules) from the same round,
and the medians over rounds are reported. Torch runs one thread by default and the ratios use the process's CPU
time, which time-slicing by other processes does not inflate (with two OpenMP threads a descheduled thread stalls
the other at every barrier, so wall times swing 4x); wall-time ratios are reported too. The task-adapter
penalties (N-LoRA, O-LoRA) cost milliseconds, below the remaining noise of a whole step, so each round also times
them alone (value and backward, repeated) as a share of the reference step.

The ``sft-`` variants run on TRL's ``SFTTrainer`` (its fused LM head and loss): ContinualSFTTrainer's N-LoRA
against SFTTrainer's own plain LoRA step.

    python benchmarks/step_time.py --rounds 15
    python benchmarks/step_time.py --rounds 15 --only sft-nlora-delta_w@1 sft-nlora-delta_w@4 sft-nlora-delta_w@4+merge \
        --output step_time_trl.json
    python benchmarks/step_time.py --profile --only inclora@4 ilora@2
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional

import datasets
import torch
from peft import LoraConfig, OSFConfig, get_peft_model
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from common import environment, markdown_table, quartiles, run_rounds, write_json
from peft_continual import ContinualTrainer, ILoraConfig, IncLoraConfig, NLoraConfig, OLoraConfig, ReplayConfig
from peft_continual.demo_model import load_smollm2

QV, QO = ["q_proj", "v_proj"], ["q_proj", "o_proj"]


@dataclass
class Variant:
    name: str
    config_class: type
    task: int  # 0-based index of the task being trained
    modules: list[str] = field(default_factory=lambda: list(QV))
    options: dict = field(default_factory=dict)
    reference: str = "lora"
    target: Optional[str] = None  # "nlora": <= 1.03 x reference; "ilora": <= 1.15 x floor; "task15": <= 1.05 x task 1
    trl: bool = False  # on TRL's SFTTrainer (ContinualSFTTrainer for the continual methods)


VARIANTS = [
    Variant("lora", LoraConfig, 0),
    Variant("inclora@1", IncLoraConfig, 0),
    Variant("inclora@4", IncLoraConfig, 3),
    Variant("inclora@4+merge", IncLoraConfig, 3, options={"merge_finished_adapters": True}),
    Variant("nlora-delta_w@1", NLoraConfig, 0, target="nlora"),
    Variant("nlora-delta_w@4", NLoraConfig, 3, target="nlora"),
    Variant("nlora-delta_w@4+merge", NLoraConfig, 3, options={"merge_finished_adapters": True}, target="nlora"),
    # Task 15 against task 1 of the same method: 14 earlier adapters in the forward, or merged into the base.
    Variant("inclora@15", IncLoraConfig, 14, reference="inclora@1"),
    Variant("inclora@15+merge", IncLoraConfig, 14, options={"merge_finished_adapters": True}, reference="inclora@1",
            target="task15"),
    Variant("nlora-delta_w@15", NLoraConfig, 14, reference="nlora-delta_w@1"),
    Variant("nlora-delta_w@15+merge", NLoraConfig, 14, options={"merge_finished_adapters": True},
            reference="nlora-delta_w@1", target="task15"),
    Variant("olora@1", OLoraConfig, 0),
    Variant("olora@4", OLoraConfig, 3),
    Variant("olora@4+merge", OLoraConfig, 3, options={"merge_finished_adapters": True}),
    Variant("er@2", ReplayConfig, 1),
    Variant("ilora@2", ILoraConfig, 1, target="ilora"),
    # peft's OSF at the first task (the most trainable singular directions), trained by a plain Trainer
    Variant("osf@1", OSFConfig, 0, options={"effective_rank": 1}),
    Variant("lora[q,o]", LoraConfig, 0, QO, reference="lora[q,o]"),
    Variant("nlora-delta_w[q,o]@1", NLoraConfig, 0, QO, reference="lora[q,o]", target="nlora"),
    Variant("nlora-rank_product[q,o]@1", NLoraConfig, 0, QO, {"collision_form": "rank_product"}, "lora[q,o]", "nlora"),
    Variant("nlora-rank_product[q,o]@4", NLoraConfig, 3, QO, {"collision_form": "rank_product"}, "lora[q,o]", "nlora"),
    Variant("sft-lora", LoraConfig, 0, reference="sft-lora", trl=True),
    Variant("sft-nlora-delta_w@1", NLoraConfig, 0, reference="sft-lora", target="nlora", trl=True),
    Variant("sft-nlora-delta_w@4", NLoraConfig, 3, reference="sft-lora", target="nlora", trl=True),
    Variant("sft-nlora-delta_w@4+merge", NLoraConfig, 3, options={"merge_finished_adapters": True}, reference="sft-lora",
            target="nlora", trl=True),
]
REFUSED = Variant("nlora-rank_product[q,v]@1", NLoraConfig, 0, QV, {"collision_form": "rank_product"})


def with_references(names: list[str]) -> list[Variant]:
    """The named variants and, transitively, the references their ratios need, in VARIANTS order."""
    by_name = {v.name: v for v in VARIANTS}
    unknown = set(names) - set(by_name)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(by_name)}")
    wanted = set(names)
    while not {by_name[n].reference for n in wanted} <= wanted:
        wanted |= {by_name[n].reference for n in wanted}
    return [v for v in VARIANTS if v.name in wanted]


def make_batch(vocab_size: int, batch: int, length: int, answer: int, seed: int) -> dict[str, torch.Tensor]:
    """Random full-length sequences; the loss covers the last ``answer`` tokens, as in the CL prompts."""
    ids = torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :-answer] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class Runner:
    """One variant, ready to take optimizer steps exactly as Trainer's inner loop does."""

    def __init__(self, variant: Variant, base, tokenizer, features: datasets.Dataset, batch, output_dir: str):
        # Frozen base weights are shared between variants (memo) unless merging writes into them.
        merging = variant.options.get("merge_finished_adapters", False)
        model = copy.deepcopy(base, memo=None if merging else {id(p): p for p in base.parameters()})
        args = TrainingArguments(output_dir=output_dir, use_cpu=True, report_to="none", save_strategy="no",
                                 per_device_train_batch_size=len(batch["input_ids"]))  # fmt: skip
        if variant.trl:
            from trl import SFTConfig

            args = SFTConfig(**{k: getattr(args, k) for k in ("output_dir", "use_cpu", "report_to", "save_strategy",
                                                              "per_device_train_batch_size")})  # fmt: skip
        if variant.trl and variant.config_class is LoraConfig:  # TRL's own LoRA step: the reference
            from trl import SFTTrainer

            config = LoraConfig(r=8, lora_alpha=32, target_modules=variant.modules, task_type="CAUSAL_LM")
            probe = datasets.Dataset.from_list([{"prompt": "probe", "completion": " probe"}])
            self.trainer = SFTTrainer(model=get_peft_model(model, config), args=args, processing_class=tokenizer,
                                      train_dataset=probe)  # fmt: skip
            peft_model, self.method = self.trainer.model, None
        elif variant.config_class is OSFConfig:  # peft's own method: no continual hooks, a plain Trainer
            config = OSFConfig(target_modules=variant.modules, task_type="CAUSAL_LM", **variant.options)
            peft_model = get_peft_model(model, config)
            self.trainer, self.method = Trainer(model=peft_model, args=args), None
        else:
            config = variant.config_class(r=8, lora_alpha=32, target_modules=variant.modules, task_type="CAUSAL_LM",
                                          **variant.options)  # fmt: skip
            peft_model = get_peft_model(model, config)
            trainer_class = ContinualTrainer
            if variant.trl:
                from peft_continual import ContinualSFTTrainer as trainer_class
            self.trainer = trainer_class(model=peft_model, args=args, processing_class=tokenizer, chat_template="off")
            self.method = self.trainer.method
            for task in range(variant.task):
                self.method.begin_task(peft_model, task, f"task{task}")
                self.method.end_task(peft_model, task, features)
            self.method.begin_task(peft_model, variant.task, f"task{variant.task}")
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we do not run
        self.params = [p for p in peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-3, fused=True)
        self.batch = batch
        self.num_items = batch["labels"].ne(-100).sum()
        self.active = len(peft_model.base_model.active_adapters)

    def step(self) -> None:
        trainer = self.trainer
        trainer.training_step(trainer.model, dict(self.batch), num_items_in_batch=self.num_items)
        torch.nn.utils.clip_grad_norm_(self.params, trainer.args.max_grad_norm)
        self.optimizer.step()
        if self.method is not None:
            self.method.after_optimizer_step(trainer.peft_model)
        self.optimizer.zero_grad(set_to_none=True)

    def extra_terms(self) -> None:
        """The method's extra loss terms alone, value and backward: what they add to a step, measurable precisely."""
        _, terms = self.method.loss_terms(self.trainer.peft_model, self.batch)
        torch.stack(list(terms.values())).sum().backward()
        self.optimizer.zero_grad(set_to_none=True)

    def forward_backward(self) -> None:
        """I-LoRA floor part: the replay batch's forward and backward (no optimizer work)."""
        self.trainer.training_step(self.trainer.model, dict(self.batch), num_items_in_batch=self.num_items)
        self.optimizer.zero_grad(set_to_none=True)

    def no_grad_forward(self) -> None:
        """I-LoRA floor part: the slow learner's forward (eval mode, no grad, hidden states kept)."""
        model = self.trainer.model
        model.eval()
        with torch.no_grad():
            model(input_ids=self.batch["input_ids"], attention_mask=self.batch["attention_mask"],
                  output_hidden_states=True)  # fmt: skip
        model.train()


def repeated(fn: Callable[[], None], times: int) -> Callable[[], None]:
    def run():
        for _ in range(times):
            fn()

    return run


def profile_tables(runners: dict, steps: int, rows: int) -> dict[str, str]:
    """torch.profiler table (ops by self CPU time) of ``steps`` optimizer steps of each variant."""
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for name, runner in runners.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            repeated(runner.step, steps)()
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return tables


def build_jobs(chosen: list[Variant], runners: dict, term_repeats: int) -> tuple[dict, dict]:
    """Timed jobs by name (each variant's step, penalties alone, I-LoRA's floor parts) and their calls per run."""
    jobs = {name: r.step for name, r in runners.items()}
    calls = {}
    for v in chosen:  # the task-adapter penalties alone take milliseconds: repeated, averaged per call
        if v.config_class is NLoraConfig or (v.config_class is OLoraConfig and v.task > 0):
            jobs[f"terms {v.name}"] = repeated(runners[v.name].extra_terms, term_repeats)
            calls[f"terms {v.name}"] = term_repeats
    if "ilora@2" in runners:  # the parts of I-LoRA's floor, on the plain LoRA model
        jobs.update({"fwd+bwd": runners["lora"].forward_backward, "no-grad fwd": runners["lora"].no_grad_forward})
    return jobs, calls


def refusal_message(base, tokenizer, features, batch, output_dir) -> Optional[str]:
    """rank_product on q/v (v_proj is 576 -> 192): the first step must raise a clear error."""
    try:
        Runner(REFUSED, base, tokenizer, features, batch, output_dir).step()
    except ValueError as error:
        return str(error)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default="/work/cache/smollm2", help="converted SmolLM2 checkpoint")
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per variant (one per round)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the rounds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="variant names to run (references are added)")
    parser.add_argument("--term-repeats", type=int, default=5, help="calls of N-LoRA/O-LoRA's terms timed per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the module docstring)")
    parser.add_argument("--profile", action="store_true", help="instead of timing, profile the chosen variants")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="step_time.json")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    base, tokenizer = load_smollm2(cache_dir=args.cache_dir)
    batch = make_batch(base.config.vocab_size, args.batch_size, args.seq_len, answer=4, seed=args.seed)
    replay = make_batch(base.config.vocab_size, 4 * args.batch_size, args.seq_len, answer=4, seed=args.seed + 1)
    features = datasets.Dataset.from_dict({k: v.tolist() for k, v in replay.items()})
    chosen = with_references(args.only or [v.name for v in VARIANTS])

    with tempfile.TemporaryDirectory() as output_dir:
        refused = refusal_message(base, tokenizer, features, batch, output_dir)
        runners = {v.name: Runner(v, base, tokenizer, features, batch, output_dir) for v in chosen}
        if args.profile:
            return profile_only(runners, args)
        jobs, calls = build_jobs(chosen, runners, args.term_repeats)
        wall, cpu = run_rounds(jobs, calls, args.rounds, args.warmup, args.seed)

    results = {"cpu": summarise(chosen, runners, cpu), "wall": summarise(chosen, runners, wall)}
    payload = {"environment": environment(), "settings": vars(args), "refused": {REFUSED.name: refused},
               "results": results, "cpu_s": cpu, "wall_s": wall}  # fmt: skip
    path = write_json(args.output, payload)
    for clock in ("cpu", "wall"):
        print(f"\n{clock} time:\n" + render(results[clock]))
    print(f"\n{REFUSED.name}: " + (f"refused: {refused}" if refused else "NOT refused"))
    print(f"\nwritten {path}")


def profile_only(runners: dict, args) -> None:
    for runner in runners.values():
        repeated(runner.step, args.warmup)()
    tables = profile_tables(runners, args.profile_steps, rows=15)
    for name, table in tables.items():
        print(f"\n### {name} ({args.profile_steps} steps)\n{table}")
    path = write_json("step_profile.json", {"environment": environment(), "settings": vars(args), "tables": tables})
    print(f"\nwritten {path}")


def summarise(chosen: list[Variant], runners: dict, times: dict[str, list[float]]) -> dict:
    """Per-round ratios to the reference, their quartiles, and each target's verdict."""
    def ratios(name, reference):
        return [t / r for t, r in zip(times[name], times[reference])]

    results = {}
    for v in chosen:
        q1, med, q3 = quartiles(ratios(v.name, v.reference))
        entry = {"reference": v.reference, "task": v.task + 1, "active_adapters": runners[v.name].active,
                 "median_step_s": quartiles(times[v.name])[1], "ratio": med, "ratio_q1": q1, "ratio_q3": q3}  # fmt: skip
        if f"terms {v.name}" in times:
            entry["terms_share"] = quartiles(ratios(f"terms {v.name}", v.reference))[1]
        if v.target in ("nlora", "task15"):
            limit = {"nlora": 1.03, "task15": 1.05}[v.target]
            entry.update(target=f"<= {limit} x {v.reference}", met=med <= limit)
        results[v.name] = entry
    if "ilora@2" in results:
        # floor = plain step + replay fwd+bwd + no-grad fwd, all measured in the same rounds as I-LoRA
        floor = [1 + fb / t + nf / t for fb, nf, t in zip(times["fwd+bwd"], times["no-grad fwd"], times["lora"])]
        to_floor = [r / f for r, f in zip(ratios("ilora@2", "lora"), floor)]
        for name in ("fwd+bwd", "no-grad fwd"):
            results[name] = {"reference": "lora", "ratio": quartiles(ratios(name, "lora"))[1],
                             "median_step_s": quartiles(times[name])[1]}  # fmt: skip
        q1, med, q3 = quartiles(to_floor)
        results["ilora@2"].update(floor_ratio=quartiles(floor)[1], ratio_to_floor=med, ratio_to_floor_q1=q1,
                                  ratio_to_floor_q3=q3, target="<= 1.15 x floor", met=med <= 1.15)  # fmt: skip
        if "er@2" in results:  # ER's own floor: plain step + replay fwd+bwd
            er_floor = [1 + fb / t for fb, t in zip(times["fwd+bwd"], times["lora"])]
            results["er@2"]["ratio_to_floor"] = quartiles([r / f for r, f in zip(ratios("er@2", "lora"), er_floor)])[1]
    return results


def render(results: dict) -> str:
    rows = []
    for name, r in results.items():
        spread = f"{r['ratio_q1']:.3f}–{r['ratio_q3']:.3f}" if "ratio_q1" in r else ""
        floor = f"{r['ratio_to_floor']:.3f} (floor {r['floor_ratio']:.2f})" if "floor_ratio" in r else (
            f"{r['ratio_to_floor']:.3f}" if "ratio_to_floor" in r else "")  # fmt: skip
        verdict = ("met" if r["met"] else "MISSED") if "met" in r else ""
        terms = f"{r['terms_share']:.4f}" if "terms_share" in r else ""
        rows.append([name, r.get("task", ""), r.get("active_adapters", ""), f"{r['median_step_s']:.2f}",
                     f"{r['ratio']:.3f}", spread, r["reference"], terms, floor, r.get("target", ""), verdict])  # fmt: skip
    return markdown_table(["variant", "task", "adapters in forward", "median step (s)", "ratio", "ratio q1–q3",
                           "reference", "extra terms / ref. step", "to floor", "target", "verdict"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
