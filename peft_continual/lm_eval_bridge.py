"""lm-evaluation-harness tasks scored on the model in memory, with its adapters as they are.

A continual run wants general-ability probes (ARC, HellaSwag, GSM8K, or a local YAML task) after every task.
Reloading the base and the exported adapter each time would cost a second copy of the base and a save per task,
so this hands lm-eval's ``HFLM`` the live model instead. lm-eval is an optional extra (``peft_continual[lm_eval]``).
"""

from __future__ import annotations

import copy
import difflib
import functools
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

INSTALL_HINT = "pip install 'peft_continual[lm_eval]'"


def _lm_eval():
    """Import lm-eval on first use, so the package works without it and says how to get it."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError(f"lm-evaluation-harness tasks need lm-eval: {INSTALL_HINT}") from error
    return simple_evaluate, HFLM, TaskManager


def _include_paths(include_path) -> tuple[str, ...]:
    """Absolute include paths, each checked to exist: lm-eval would silently index nothing for a wrong one."""
    if include_path is None:
        return ()
    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"lm-eval include path not found: {', '.join(missing)}")
    return tuple(str(Path(p).resolve()) for p in paths)


@functools.lru_cache(maxsize=4)
def _task_manager(include_paths: tuple[str, ...]):
    """One task index per include paths: indexing lm-eval's ~15k built-in YAMLs takes seconds, and a run evaluates
    after every task. YAML files added to an include path later in the same process are not seen."""
    _, _, TaskManager = _lm_eval()
    return TaskManager(include_path=list(include_paths) or None)


def _check_tasks(tasks: list[str], task_manager, include_paths: tuple[str, ...]) -> None:
    """Unknown names fail here, with close matches, rather than after the model was wrapped."""
    if not tasks:
        raise ValueError("lm_eval_scores needs at least one lm-eval task name")
    known = set(task_manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if not unknown:
        return
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name, task_manager.all_tasks, n=5, cutoff=0.6)
        lines.append(f"'{name}'" + (f" (did you mean: {', '.join(close)}?)" if close else ""))
    where = f"include path {', '.join(include_paths)}" if include_paths else "no include_path (your own YAML needs one)"
    raise ValueError(f"Unknown lm-eval task {'; '.join(lines)}; searched lm-eval's tasks and {where}")


def check_tasks(tasks: Sequence[str], include_path=None) -> None:
    """Before any model work: lm-eval installed, the include paths there, every task name known (else close matches)."""
    _lm_eval()  # the task index below is cached: say a missing lm-eval even after it was built
    include_paths = _include_paths(include_path)
    _check_tasks(list(tasks), _task_manager(include_paths), include_paths)


def _number(value):
    return float(value) if isinstance(value, (bool, int, float, np.number)) else value


def _scores(out: dict) -> dict:
    """Per task: lm-eval's metrics under its own keys (``"acc,none"``, ``"acc_stderr,none"``: metric, filter) and
    the per-example scores behind each mean, in ``doc_ids`` order, for paired comparisons between checkpoints.
    Corpus-level metrics (BLEU, F1 over pairs) have no per-example score and are left out of ``per_example``."""
    scores = {}
    for task, result in out["results"].items():
        samples = sorted(out.get("samples", {}).get(task, []), key=lambda s: s["doc_id"])
        per_example: dict[str, list[float]] = {}
        for sample in samples:
            for metric in sample["metrics"]:
                value = sample[metric]
                if isinstance(value, (bool, int, float, np.number)):
                    per_example.setdefault(f"{metric},{sample['filter']}", []).append(float(value))
        scores[task] = {
            "metrics": {k: _number(v) for k, v in result.items() if "," in k},
            "higher_is_better": out.get("higher_is_better", {}).get(task, {}),
            "per_example": per_example,
            "doc_ids": sorted({s["doc_id"] for s in samples}),
        }
    return scores


def lm_eval_scores(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    include_path=None,
    limit=None,
    batch_size=8,
    num_fewshot=None,
    **kwargs,
) -> dict:
    """Score lm-eval ``tasks`` on ``model`` as it is in memory (a ``PeftModel`` with its active adapters, or a
    plain model): no reload, no second copy of the base.

    ``include_path``: a folder (or list) of your own task YAMLs, as ``lm_eval --include_path``. ``limit``,
    ``num_fewshot`` and ``**kwargs`` (``apply_chat_template``, ``gen_kwargs``, ``bootstrap_iters``, ...) go to
    ``lm_eval.simple_evaluate``. Returns ``{task: {"metrics", "higher_is_better", "per_example", "doc_ids"}}``
    (see ``_scores``). The model's train/eval modes, the caller's tokenizer and the global random states are as
    they were, so an evaluation in the middle of a run does not change its training.
    """
    simple_evaluate, HFLM, _ = _lm_eval()
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    include_paths = _include_paths(include_path)
    task_manager = _task_manager(include_paths)
    check_tasks(tasks, include_path)

    if tokenizer.pad_token is None:
        tokenizer = copy.deepcopy(tokenizer)  # HFLM gives the tokenizer it gets a pad token
    modes = [(module, module.training) for module in model.modules()]  # HFLM calls model.eval()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():  # simple_evaluate reseeds torch, random and numpy globally
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = simple_evaluate(
                model=lm, tasks=tasks, task_manager=task_manager, limit=limit, num_fewshot=num_fewshot,
                log_samples=True, **kwargs,
            )  # fmt: skip
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        for module, training in modes:
            module.training = training
    return _scores(out)
