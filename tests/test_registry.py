"""The method registry is the single source: a method added in this file (one config class, one method class,
registered in one place) reaches the trainer, the example's flags, saving, loading and the model card."""

import dataclasses
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from peft import LoraConfig
from transformers import TrainingArguments

from conftest import synthetic_rows, tiny_model
from peft_continual import NLoraConfig, methods
from peft_continual.adapters import adapter_parameters
from peft_continual.methods import SeqLoraMethod, register_method, registered_methods

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "run_continual_clm.py"


# ------------------------------------------------------------------------------- what a contributor writes


@dataclass
class ToyConfig(LoraConfig):
    """Toy: SeqLoRA plus a pull of the adapter's weights toward zero."""

    toy_weight: float = field(default=0.25, metadata={"help": "Weight of the squared norm of the adapter's weights."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (a default of its own)."})

    def __post_init__(self):
        super().__post_init__()
        if self.toy_weight < 0:
            raise ValueError(f"toy_weight must be >= 0, got {self.toy_weight}.")


class ToyMethod(SeqLoraMethod):
    """One adapter trained task after task, with ``toy_weight * sum(w ** 2)`` added to the loss."""

    name = "toy"
    title = "Toy (weight-decayed sequential LoRA)"
    config_class = ToyConfig

    def loss_terms(self, model, inputs, wrapped=None, accumulation=1):
        params = adapter_parameters(model, self.initial_adapter)
        return 1.0, {"loss_toy": self.config.toy_weight * sum((p.float() ** 2).sum() for p in params)}


@pytest.fixture
def toy_registered(monkeypatch):
    """``@register_method`` on ToyMethod, on a copy of the registry so that other tests never see it."""
    monkeypatch.setattr(methods.base, "_REGISTRY", dict(methods.base._REGISTRY))
    register_method(ToyMethod)


def load_script():
    """A fresh copy of the example: its flags are derived from the registry when it is imported."""
    spec = importlib.util.spec_from_file_location("run_continual_clm_fresh", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------- tests


def test_a_new_method_is_one_config_class_and_one_method_class(toy_registered, tmp_path, tokenizer, capsys):
    files = []
    for name in ("colors", "animals"):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(name, 12, seed=0)))
    script = load_script()
    help_text = script.build_parser().format_help()
    assert "--cl_method {seqlora,inclora,nlora,olora,replay,ilora,nlora_replay,osf,lwf,ssr,self_rehearsal,toy}" in help_text
    flat = " ".join(help_text.split())
    assert "toy: Weight of the squared norm of the adapter's weights. Default: 0.25." in flat
    # argparse breaks the long list of owners in the middle: compare without whitespace
    assert "LoraAlpha.Default:32(seqlora/inclora/nlora/olora/replay/ilora/nlora_replay/lwf/ssr/self_rehearsal),16(toy).".lower() in "".join(flat.split()).lower()
    with pytest.raises(SystemExit):  # the flag has the config field's type
        script.parse_args(["--model_name_or_path", "m", "--continual_tasks", "x", "--toy_weight", "heavy"])
    assert "argument --toy_weight/--toy-weight: invalid float value: 'heavy'" in capsys.readouterr().err
    cl_args = script.parse_args(["--model_name_or_path", "m", "--continual_tasks", "x", "--cl_method", "toy", "--toy_weight", "0.5"])[2]
    assert cl_args.toy_weight == 0.5 and isinstance(script.build_peft_config(cl_args), ToyConfig)
    with pytest.raises(ValueError, match="--toy_weight is a hyper-parameter of toy, not of --cl_method ilora"):
        script.build_peft_config(script.parse_args(["--model_name_or_path", "m", "--continual_tasks", "x", "--toy_weight", "1"])[2])
    with pytest.raises(SystemExit, match="toy_weight must be >= 0"):  # the config's own validation, before any model
        script.main(["--model_name_or_path", "m", "--continual_tasks", str(files[0]), "--cl_method", "toy", "--toy_weight", "-1"])

    # Trained, saved (model card), then continued from the saved folder: the trainer and loading find it too.
    model, _ = tiny_model("llama", tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    common = ["--model_name_or_path", str(tmp_path / "model"), "--max_source_length", "48", "--use_cpu", "--logging_steps", "1",
              "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--disable_tqdm", "true"]  # fmt: skip
    result = script.main([*common, "--continual_tasks", str(files[0]), "--output_dir", str(tmp_path / "out"),
                          "--cl_method", "toy", "--toy_weight", "0.5", "--target_modules", "q_proj", "v_proj"])  # fmt: skip
    assert result.method == "toy" and "'loss_toy'" in capsys.readouterr().out
    final = tmp_path / "out" / "final"
    card = (final / "README.md").read_text(encoding="utf-8")
    assert "# Toy (weight-decayed sequential LoRA) on 1 tasks" in card and "- `toy_weight`: `0.5`" in card
    assert "- `r`: `8`" in card and "- `lora_alpha`: `16`" in card and "collision_lambda" not in card
    assert json.loads((final / "continual_state.json").read_text())["config_class"] == "ToyConfig"
    saved = {p.parent.name: json.loads(p.read_text()) for p in final.glob("*/adapter_config.json")}
    assert set(saved) == {"default"} and "toy_weight" not in saved["default"]  # plain peft loads it without a warning
    result = script.main([*common, "--continual_tasks", str(files[1]), "--output_dir", str(tmp_path / "more"),
                          "--continue_from", str(final)])  # fmt: skip
    assert result.method == "toy" and result.num_trained == 2


def test_every_hyperparameter_flag_comes_from_a_config_field():
    script = load_script()
    for flag, key in script.HYPERPARAMETERS.items():
        owners = [m for m in registered_methods().values() if key in m.hyperparameters()]
        assert owners, flag
        config_field = {f.name: f for f in dataclasses.fields(owners[0].config_class)}[key]
        assert config_field.metadata["help"].strip()[:40] in script.METHOD_FLAGS[flag].field.metadata["help"]
    assert set(script.HYPERPARAMETERS.values()) == {k for m in registered_methods().values() for k in m.hyperparameters()}


def test_help_is_short_and_shows_real_defaults(capsys):
    script = load_script()
    with pytest.raises(SystemExit) as exit_help:
        script.parse_args(["--help"])
    short = capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_help_all:
        script.parse_args(["--help_all"])
    full = capsys.readouterr().out
    assert exit_help.value.code == exit_help_all.value.code == 0
    # short: of Trainer's ~110 arguments only the listed few (the methods' own flags grow with the registry)
    training = {f.name for f in dataclasses.fields(TrainingArguments)}
    shown = {name for name in training if re.search(rf"^\s+--{re.escape(name)}\b", short, flags=re.M)}
    assert shown == set(script.TRAINING_FLAGS) and len(training) > 3 * len(shown)
    assert {name for name in training if re.search(rf"^\s+--{re.escape(name)}\b", full, flags=re.M)} == training
    assert "--adam_beta1" in full and "--adam_beta1" not in short and "--learning_rate" in short
    flat = " ".join(short.split())
    assert "(default: None)" not in flat and "--collision-lambda" not in flat  # no duplicate hyphenated spellings
    lam = {f.name: f for f in dataclasses.fields(NLoraConfig)}["collision_lambda"]
    assert lam.default not in (None, dataclasses.MISSING)
    squeezed = "".join(flat.split())  # argparse may wrap at a hyphen of the help text
    assert "".join(f"nlora/nlora_replay: {lam.metadata['help']} Default: {lam.default}.".split()) in squeezed
    assert "ilora: Learner used for evaluation and exported as the root adapter. Default: slow." in flat
    assert "Default: 256, or the saved run's with --continue_from" in flat  # ContinualTrainer's max_source_length


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--cl_method", "nlora", "--collision_lambda", "0.5"], {"collision_lambda": 0.5}),
        (["--cl_method", "nlora", "--collision_lambda", "1", "2"], {"collision_lambda": [1.0, 2.0]}),
        (["--cl_method", "ilora", "--consistency_layers", "2"], {"consistency_layers": [2]}),
        (["--cl_method", "ilora", "--consistency_layers", "last"], {"consistency_layers": "last"}),
        (["--cl_method", "ilora", "--consistency_layers", "1", "3"], {"consistency_layers": [1, 3]}),
        (["--cl_method", "seqlora", "--target_modules", "q_proj"], {"target_modules": ["q_proj"]}),
        (["--cl_method", "inclora", "--merge_finished_adapters", "true"], {"merge_finished_adapters": True}),
    ],
)
def test_flags_take_the_config_fields_types(argv, expected):
    script = load_script()
    cl_args = script.parse_args(["--model_name_or_path", "m", "--continual_tasks", "x", *argv])[2]
    assert script.method_hyperparameters(cl_args, cl_args.cl_method) == expected


def test_a_value_of_the_wrong_type_is_a_clear_error():
    script = load_script()
    with pytest.raises(ValueError, match=r"--collision_lambda takes .*float.*, got \['x', 'y'\]"):
        script.parse_args(["--model_name_or_path", "m", "--continual_tasks", "x", "--collision_lambda", "x", "y"])


def test_registration_errors(monkeypatch):
    monkeypatch.setattr(methods.base, "_REGISTRY", dict(methods.base._REGISTRY))

    class Unnamed(SeqLoraMethod):
        config_class = ToyConfig

    with pytest.raises(TypeError, match="Unnamed must set its own class attribute 'name'"):
        register_method(Unnamed)

    class Clash(SeqLoraMethod):
        name, title, config_class = "nlora", "x", ToyConfig

    with pytest.raises(ValueError, match="Clash clashes with the registered NLoraMethod"):
        register_method(Clash)

    class NotLora(SeqLoraMethod):
        name, title, config_class = "notlora", "x", dict

    with pytest.raises(TypeError, match="config_class must be a peft config class"):
        register_method(NotLora)


def test_builtin_methods_and_their_titles():
    assert list(registered_methods()) == ["seqlora", "inclora", "nlora", "olora", "replay", "ilora", "nlora_replay", "osf",
                                          "lwf", "ssr", "self_rehearsal"]  # fmt: skip
    assert registered_methods()["seqlora"].config_class is LoraConfig
    lora_methods = [m for name, m in registered_methods().items() if name != "osf"]
    assert all(m.title and m.hyperparameters()[:4] == ["r", "lora_alpha", "lora_dropout", "target_modules"]
               for m in lora_methods)  # fmt: skip
    assert registered_methods()["osf"].hyperparameters() == ["target_modules", "preserved_ranks", "project_updates"]  # no LoRA
    assert registered_methods()["nlora"].hyperparameters()[4:] == [
        "merge_finished_adapters", "collision_lambda", "collision_form", "collision_reduction", "collision_chunk_elements",
    ]  # fmt: skip
    with pytest.raises(TypeError, match="abstract"):
        methods.ContinualMethod(LoraConfig(), "default")
