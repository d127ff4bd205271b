"""A built wheel carries the role set and works from any directory, not only from a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers.paths import QUESTIONS, ROLES_DIR, ROOT

PIP = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def pip(*args: str) -> None:
    """Run pip offline in this interpreter; fail with pip's own output."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **PIP},
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_wheel_ships_the_role_set_and_runs_from_another_directory(tmp_path):
    src = tmp_path / "src"  # a copy, so that building leaves the checkout untouched
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src))
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in [*ROLES_DIR.glob("*.json"), QUESTIONS]:
        assert f"persona_dynamics/{path.relative_to(ROOT / 'src' / 'persona_dynamics')}" in names

    site = tmp_path / "site"  # the wheel alone; torch and the rest come from this environment
    pip("install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True)

    r = run(sys.executable, "-c", "import persona_dynamics; print(persona_dynamics.__file__)")
    assert r.stdout.startswith(str(site)), r.stdout + r.stderr  # not the checkout's package
    r = run(sys.executable, "-m", "persona_dynamics", "roles", "list")
    shipped = sorted(p.stem for p in ROLES_DIR.glob("*.json") if p.stem != "default")
    assert r.returncode == 0 and r.stdout.split() == shipped and len(shipped) == 284, r.stderr
    r = run(str(site / "bin" / "persona-dynamics"), "roles", "validate")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok: 284 roles, 6 default prompts, 240 questions"
    (elsewhere / "study.toml").write_text(
        'run_name = "x"\n[[checkpoints]]\nlabel = "a"\nmodel = "org/m"\n'
    )
    code = (
        "from persona_dynamics.config import load\n"
        "from persona_dynamics.transcripts import selection\n"
        "roles, questions = selection(load('study.toml'))\n"
        "print(len(roles), len(questions['default']))\n"
    )
    r = run(sys.executable, "-c", code)
    assert r.returncode == 0 and r.stdout.split() == ["285", "240"], r.stderr
