"""Tasks of a continual sequence: classification (label options) and generation (free-form targets).

One idea per module: ``sources`` resolves specs (benchmark names, files, folders, Hub ids, the offline generation
sequence of ``derived``); ``formats`` brings rows of every format to one shape with errors naming file and row;
``task`` holds ``ContinualTask``; ``prompts`` renders the reference prompt or the chat template; ``encoding``
tokenises with an exact prompt/target boundary and collates.
"""

from .derived import GENERATION_ORDER
from .encoding import (
    IGNORE_INDEX,
    ContinualCollator,
    EvalEncoding,
    PromptEncoder,
    encode_eval,
    fit_max_new_tokens,
    left_pad,
    tokenize_task,
)
from .formats import CLASSIFICATION, GENERATION, TaskSpecError
from .prompts import CHAT_TEMPLATE_MODES, ChatTemplateMode, use_chat_template
from .sources import (
    BENCHMARK_INSTRUCTIONS,
    BENCHMARK_TASKS,
    DATA_DIR_ENV,
    NO_GOLD_LABEL,
    STANDARD_ORDERS,
    load_continual_tasks,
    packaged_demo_dir,
)
from .task import ContinualTask, check_unique_names

__all__ = [
    "BENCHMARK_INSTRUCTIONS", "BENCHMARK_TASKS", "CHAT_TEMPLATE_MODES", "CLASSIFICATION", "ChatTemplateMode",
    "ContinualCollator", "ContinualTask", "DATA_DIR_ENV", "EvalEncoding", "GENERATION", "GENERATION_ORDER",
    "IGNORE_INDEX", "NO_GOLD_LABEL", "PromptEncoder", "STANDARD_ORDERS", "TaskSpecError", "check_unique_names",
    "encode_eval", "fit_max_new_tokens", "left_pad", "load_continual_tasks", "packaged_demo_dir", "tokenize_task", "use_chat_template",
]  # fmt: skip
