"""The command line: help lists the stages, user errors are one line with exit code 2."""

from __future__ import annotations

from helpers.cli import cli


def test_help_lists_every_stage():
    out = cli("--help").stdout
    stages = ("generate", "judge", "capture", "analyze", "compare", "report", "run", "demo")
    for cmd in ("roles", "config", "toy", "revisions", "adapters", *stages):
        assert cmd in out, cmd


def test_roles_list_and_show():
    r = cli("roles", "list")
    assert r.returncode == 0 and "pirate" in r.stdout.split()
    assert "default" not in r.stdout.split()
    r = cli("roles", "show", "pirate")
    assert r.returncode == 0 and r.stdout.count("\n[") == 5 and "eval_prompt:" in r.stdout


def test_validate_shipped_set():
    r = cli("roles", "validate")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: ") and "240 questions" in r.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text(
        'run_name = "x"\n[[checkpoints]]\nlabel = "a"\nmodel = "m"\n[capture]\nlayer = 3\n'
    )
    r = cli("config", "check", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "c.toml: capture.layer: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = cli("--debug", "roles", "show", "no_such_role")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_validate_broken_dir_exits_2(tmp_path):
    (tmp_path / "pirate.json").write_text("{")
    r = cli("roles", "validate", str(tmp_path))
    assert r.returncode == 2
    assert "pirate.json:1:2: invalid JSON" in r.stderr


def test_usage_error_exit_code():
    r = cli("roles", "lst")
    assert r.returncode == 2 and "No such command" in r.stderr
