"""The package works outside the checkout: a non-editable `pip install .` into a fresh venv, then
`avllm chat` run from another folder answers with the trained starter shipped inside the package.

The fresh venv borrows the dependencies (torch and the rest, several GB) from this interpreter's
site-packages through a .pth file instead of installing them again. A folder named in a .pth file
is not itself scanned for .pth files, so an editable install of avllm there stays inactive: the
test checks that `avllm` is imported from the fresh venv. Nothing is fetched (--no-index, and the
build uses this interpreter's setuptools). Marked slow (a build and a model load); CI runs it.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from avllm.data.synth import sample_facts
from avllm.data.synth_media import render_clip

pytestmark = pytest.mark.slow


def run(args: list, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no checkout on the path
    done = subprocess.run([str(a) for a in args], cwd=cwd, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode()


def test_installed_package_chats_from_another_folder(tmp_path):
    source = tmp_path / "source"  # what the build reads, copied so that the checkout gets no build/ folder
    shutil.copytree(REPO_ROOT / "avllm", source / "avllm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source)
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    run([*pip, "--ignore-installed", source], tmp_path)  # --ignore-installed: never touch the borrowed folder

    where = "import avllm, avllm.config as c; print(avllm.__file__); print(c.default_model())"
    package, model = (Path(line) for line in run([python, "-c", where], elsewhere).splitlines())
    assert package == site / "avllm" / "__init__.py" and model == site / "avllm" / "weights" / "starter"
    checkout = REPO_ROOT / "avllm" / "weights" / "starter"
    files = [p for p in checkout.rglob("*") if p.is_file()]
    assert files and all((model / p.relative_to(checkout)).read_bytes() == p.read_bytes() for p in files)

    facts = sample_facts(11, 4)  # a seed no recipe trains on: shapes of one colour, and a tone
    assert facts["scene"] == "one" and facts["sound"] == "tone"
    render_clip(facts, elsewhere / "clip.mp4")
    chat = [venv / "bin" / "avllm", "chat", "clip.mp4", "What colour are the shapes?", "--json"]
    report = json.loads(run(chat, elsewhere))
    assert report["model"] == "starter" and report["frames"] == 8 and report["audio_used"]
    assert facts["colour"] in report["answer"].lower()
