"""The demo sample shipped inside the package: the fallback of benchmark names, its content, and that a copy of the
repository with nothing beside it, and an installed wheel, both load the demo's tasks."""

import json
import logging
import os
import subprocess
import sys
import venv
from collections import Counter
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from peft_continual import load_continual_tasks
from peft_continual.tasks import packaged_demo_dir

REPO = Path(__file__).resolve().parents[1]
DEMO_TASKS = ["dbpedia", "amazon", "agnews"]
# Run in a fresh interpreter: the demo's tasks load, and from which folder.
LOAD_DEMO_TASKS = """
import json, peft_continual
from peft_continual import load_continual_tasks
tasks = load_continual_tasks(["dbpedia", "amazon", "agnews"])
print(json.dumps({"package": peft_continual.__file__, "sources": [t.source for t in tasks],
                  "sizes": [[len(t.train), len(t.eval)] for t in tasks]}))
"""


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PEFT_CONTINUAL_DATA_DIR")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def copy_repository(destination: Path) -> Path:
    """The repository's files (tracked and new, not ignored) in ``destination``, nothing else beside them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            (destination / name).write_bytes(source.read_bytes())
    return destination


def test_benchmark_names_fall_back_to_the_packaged_sample(monkeypatch, caplog):
    monkeypatch.delenv("PEFT_CONTINUAL_DATA_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="peft_continual"):
        tasks = load_continual_tasks(DEMO_TASKS)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3 and all("packaged for the demo" in m and "pass data_dir" in m for m in warned)
    demo = packaged_demo_dir()
    assert [t.source for t in tasks] == [str(demo / "TC" / "dbpedia"), str(demo / "SC" / "amazon"), str(demo / "TC" / "agnews")]
    assert [t.task_type for t in tasks] == ["TC", "SC", "TC"] and "sentiment" in tasks[1].instruction
    for task, eval_per_label in zip(tasks, (6, 16, 20)):  # label-balanced, every label of the benchmark
        assert Counter(task.train["label"]) == {label: 16 for label in task.labels}
        assert Counter(task.eval["label"]) == {label: eval_per_label for label in task.labels}
        assert not set(task.train["text"]) & set(task.eval["text"])


def test_packaged_sample_is_small_and_documented():
    demo = packaged_demo_dir()
    files = [p for p in demo.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 300_000
    source = (demo / "SOURCE.md").read_text(encoding="utf-8")
    assert all(word in source for word in ("Licence", "CC BY-SA", "AG News", "Amazon", "N-LoRA", "make_demo_sample.py"))
    assert sorted(str(p.relative_to(demo)) for p in files if p.suffix == ".json") == sorted(
        f"{kind}/{name}/{split}.json" for kind, name in (("TC", "dbpedia"), ("SC", "amazon"), ("TC", "agnews"))
        for split in ("labels", "test", "train")
    )  # fmt: skip


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="CL benchmark data (../shared/data/cl_benchmark) not present")
def test_packaged_sample_is_what_the_script_draws_from_the_benchmark(tmp_path):
    subprocess.run([sys.executable, str(REPO / "tools" / "make_demo_sample.py"), str(SHARED_DATA), "--output_dir", str(tmp_path)],
                   check=True, capture_output=True)  # fmt: skip
    demo = packaged_demo_dir()
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    assert made == sorted(p.relative_to(demo) for p in demo.rglob("*.json"))
    assert all((tmp_path / p).read_bytes() == (demo / p).read_bytes() for p in made)
    full = json.loads((SHARED_DATA / "CL_Benchmark" / "SC" / "amazon" / "test.json").read_text(encoding="utf-8"))
    sampled = json.loads((demo / "SC" / "amazon" / "test.json").read_text(encoding="utf-8"))
    assert all(row in full for row in sampled)  # texts unchanged


def test_demo_tasks_load_from_a_copy_with_nothing_beside_it(tmp_path):
    """A clone anywhere: no ../shared, no data_dir, no environment variable; the library and the example's demo need none."""
    copy = copy_repository(tmp_path / "clone")
    assert not (tmp_path / "shared").exists()
    example = ("import runpy; m = runpy.run_path('examples/run_continual_clm.py'); "
               "demo = m['load_tasks'](m['parse_args']([])[1], seed=0, demo=True); "
               "print(json.dumps([[t.name, t.source] for t in demo]))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", LOAD_DEMO_TASKS + example], cwd=copy, env=clean_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    library, example = map(json.loads, run.stdout.strip().splitlines()[-2:])
    demo = copy / "peft_continual" / "data" / "demo"
    assert Path(library["package"]).is_relative_to(copy)
    assert all(Path(s).is_relative_to(demo) for s in library["sources"]) and "packaged for the demo" in run.stderr
    assert [name for name, _ in example] == DEMO_TASKS and all(Path(s).is_relative_to(demo) for _, s in example)
    assert "shared" not in (copy / "examples" / "run_continual_clm.py").read_text(encoding="utf-8")


@pytest.mark.slow
def test_demo_tasks_load_from_an_installed_wheel(tmp_path):
    """The sample is part of the wheel: build it, install it (not editable) into a fresh venv, load the tasks."""
    copy = copy_repository(tmp_path / "clone")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
                           cwd=copy, env=clean_env(), capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("peft_continual-*.whl")
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], env=clean_env(),
                             capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([python, "-c", LOAD_DEMO_TASKS], cwd=elsewhere, env=clean_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    site = tmp_path / "venv" / "lib"
    assert Path(loaded["package"]).is_relative_to(site)  # the installed copy, not the checkout or an editable install
    assert all(Path(s).is_relative_to(site) for s in loaded["sources"])
    assert loaded["sizes"] == [[224, 84], [80, 80], [64, 80]]
