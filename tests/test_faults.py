"""Issue 14, faults: each refused through the CLI in one line naming the file, earlier work intact.

OS errors (disk full on a tiny tmpfs, a read-only mount, `ulimit -f`) in generate, capture and
analyze; two runs on one output (the run lock, and a stale lock recovered); Ctrl-C; a hung
endpoint. After each fault is lifted, the same command resumes and ends as an uninterrupted run.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona_dynamics.config import Generation, Judge, dump
from persona_dynamics.jsonl import key_of, read_rows
from persona_dynamics.openai_client import BACKOFF_S, worst_case_s
from persona_dynamics.transcripts import transcripts_dir

from helpers.chat_server import ChatServer
from helpers.cli import cli, command
from helpers.paths import QUESTIONS, ROLES_DIR, ROOT
from helpers.study import make_study
from helpers.transcripts import make_rows, write_transcripts

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def refused(r: subprocess.CompletedProcess, *parts: str, code: int = 2) -> str:
    """Assert one last line `error: ...` (or `interrupted: ...`), the exit code, no traceback."""
    line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert line.startswith("error: " if code == 2 else "interrupted: "), r.stderr
    for part in parts:
        assert part in line, (part, line)
    return line


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def leftovers(root: Path) -> list[str]:
    """Temporary files or locks a failed run left behind (none may look like results)."""
    return [str(p) for p in root.rglob("*") if p.name.endswith((".tmp", ".lock"))]


# --- mounts and limits -------------------------------------------------------------------------


@pytest.fixture
def mounts():
    """Mount tiny tmpfs file systems (root only, as in CI); unmount them all afterwards."""
    made: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()})")
        made.append(path)
        return path

    yield mount
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    """Change a mounted tmpfs: 'ro', 'rw', 'size=4m'."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def limited(*args: str, fsize: int) -> subprocess.CompletedProcess:
    """Run the CLI under `ulimit -f` (bytes): Python ignores SIGXFSZ, so writes fail EFBIG."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        command(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, preexec_fn=limit
    )


# --- generation against a local server -----------------------------------------------------------


def answer(body: dict) -> str:
    """A deterministic reply per request (messages and seed), about 200 characters."""
    h = hashlib.sha256(json.dumps([body["messages"], body.get("seed")]).encode()).hexdigest()
    return f"Arr, {h[:40]} be the word. " * 3


def served(tmp_path: Path, root: Path, url: str, questions: int = 4, **gen):
    """A config sampling pirate, cat and the default (16 prompts) at `url` into `root`."""
    conf = tmp_path / f"{root.name}.toml"
    cfg = make_study(
        root,
        run_name="f",
        checkpoints=[{"label": "m", "model": "test-model"}],
        roles={"dir": str(ROLES_DIR), "questions": str(QUESTIONS), "question_count": questions,
               "include": ["pirate", "cat"]},
        generation={"backend": "openai", "base_urls": [url], "max_tokens": 50,
                    "max_in_flight": 4, **gen},
    )  # fmt: skip
    conf.write_text(dump(cfg))
    return cfg, conf


def transcripts(cfg) -> dict[str, list[dict]]:
    """Each role file's rows in key order (the order requests completed in is not the result)."""
    out = transcripts_dir(cfg)
    return {p.name: sorted(read_rows(p), key=key_of) for p in sorted(out.glob("*.jsonl"))}


def lines(cfg) -> int:
    """Complete lines written so far over the role files."""
    return sum(p.read_bytes().count(b"\n") for p in transcripts_dir(cfg).glob("*.jsonl"))


@pytest.mark.slow
def test_generate_disk_full_read_only_and_file_size_limit(tmp_path, mounts):
    with ChatServer(answer) as s:
        ref, ref_conf = served(tmp_path, tmp_path / "ref", s.url)
        assert cli("generate", str(ref_conf)).returncode == 0
        want = transcripts(ref)
        assert sum(map(len, want.values())) == 64  # (5 + 5 + 6 prompts) x 4 questions

        cfg, conf = served(tmp_path, mounts(tmp_path / "out", "16k"), s.url)
        out = transcripts_dir(cfg)
        r = cli("generate", str(conf))  # disk full part-way through
        refused(r, str(out), "cannot write: No space left on device")
        assert not leftovers(tmp_path / "out")
        kept = transcripts(cfg)
        n_full = sum(map(len, kept.values()))
        assert 0 < n_full < 64  # some kept, each complete row a real one
        for name, rows in kept.items():
            assert all(row in want[name] for row in rows)

        remount(tmp_path / "out", "size=4m")
        r = limited("generate", str(conf), fsize=12_000)  # a role file outgrows ulimit -f
        refused(r, str(out), "cannot write: File too large")
        n_big = sum(map(len, transcripts(cfg).values()))
        assert n_full < n_big < 64 and not leftovers(tmp_path / "out")

        before = snapshot(out)
        remount(tmp_path / "out", "ro")
        refused(cli("generate", str(conf)), str(out / "generate.lock"), "Read-only file system")
        assert snapshot(out) == before

        remount(tmp_path / "out", "rw")
        r = cli("generate", str(conf))  # the fault lifted: resumes, ends as one clean run
        assert r.returncode == 0, r.stderr
        assert f"{64 - n_big} responses ({n_big} already written)" in r.stderr
        assert transcripts(cfg) == want and not leftovers(tmp_path / "out")


# --- capture and analyze -------------------------------------------------------------------------


def capture_config(path: Path, model: Path, transcripts: Path, out: Path) -> Path:
    """A one-checkpoint capture of `transcripts` into `out`, one sample per block."""
    path.write_text(
        f'run_name = "t"\n[[checkpoints]]\nlabel = "a"\nmodel = "{model}"\n'
        f'[capture]\ntranscript_dir = "{transcripts}"\noutput_dir = "{out}"\ndevice = "cpu"\n'
        "layers = [0, 3]\nbatch_tokens = 200\nblock_samples = 1\n"
    )
    return path


def blocks(parts: Path) -> tuple[int, int]:
    """(part files written, blocks in the plan) of a capture's parts directory."""
    from persona_dynamics.store import ActivationStore

    done = sorted(parts.glob("block-*.h5"))
    with ActivationStore.open(done[0]) as st:
        return len(done), int(st.attrs["n_blocks"])


@pytest.mark.slow
def test_capture_disk_full_read_only_and_file_size_limit(tmp_path, mounts, tiny_model_dir):
    tr = write_transcripts(tmp_path / "tr", make_rows(40))
    whole = capture_config(tmp_path / "whole.toml", tiny_model_dir, tr, tmp_path / "whole")
    assert subprocess.run(command("capture", str(whole)), env=ENV).returncode == 0
    act = mounts(tmp_path / "act", "160k")  # passes the up-front estimate, not the parts
    conf = capture_config(tmp_path / "c.toml", tiny_model_dir, tr, act)
    before = snapshot(tr)

    r = subprocess.run(command("capture", str(conf)), env=ENV, capture_output=True, text=True)
    refused(r, str(act), "cannot write: No space left on device")
    assert not (act / "a.h5").exists() and not leftovers(act)
    n_parts, n_blocks = blocks(act / "a.parts")
    assert 0 < n_parts < n_blocks

    remount(act, "size=4m")
    r = limited("capture", str(conf), fsize=40_000)  # every part fits; the store does not
    refused(r, str(act / "a.h5"), "cannot write: File too large")
    assert not (act / "a.h5").exists() and not leftovers(act)
    assert blocks(act / "a.parts") == (n_blocks, n_blocks)  # every block kept

    parts = snapshot(act)
    remount(act, "ro")
    r = subprocess.run(command("capture", str(conf)), env=ENV, capture_output=True, text=True)
    refused(r, str(act / "capture.lock"), "Read-only file system")
    assert snapshot(act) == parts

    remount(act, "rw")
    r = subprocess.run(command("capture", str(conf)), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert filecmp.cmp(act / "a.h5", tmp_path / "whole" / "a.h5", shallow=False)
    assert snapshot(tr) == before and not leftovers(act)


@pytest.mark.slow
def test_analyze_disk_full_read_only_and_file_size_limit(tmp_path, mounts):
    from helpers import planted_run

    ref = planted_run.build(tmp_path / "ref", adapter=False, across=False)
    root = tmp_path / "run"
    cfg = planted_run.study(root, adapter=False)
    for part in ("activations", "scores"):
        shutil.copytree(tmp_path / "ref" / part, root / part)
    conf = tmp_path / "study.toml"
    conf.write_text(dump(cfg))
    out = mounts(cfg.path("analysis"), "8k")
    inputs = snapshot(root / "activations") | snapshot(root / "scores")

    refused(cli("analyze", str(conf)), str(out / "space.h5"), "No space left on device")
    assert snapshot(out) == {}
    remount(out, "size=4m")
    refused(limited("analyze", str(conf), fsize=8_000), str(out / "space.h5"), "File too large")
    assert snapshot(out) == {}
    remount(out, "ro")
    refused(cli("analyze", str(conf)), str(out / "analysis.lock"), "Read-only file system")
    remount(out, "rw")

    r = cli("analyze", str(conf))
    assert r.returncode == 0, r.stderr
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, ref.path("analysis")))
    assert got.keys() == want.keys() and got["layers"] == want["layers"]
    assert snapshot(root / "activations") | snapshot(root / "scores") == inputs


# --- two runs on one output ----------------------------------------------------------------------


def wait_for(cond, timeout: float = 60, poll: float = 0.02) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(poll)


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_at_once(tmp_path):
    with ChatServer(answer, delay=0.2) as s:
        cfg, conf = served(tmp_path, tmp_path / "out", s.url)
        lock = transcripts_dir(cfg) / "generate.lock"
        first = subprocess.Popen(command("generate", str(conf)), cwd=ROOT, stderr=subprocess.PIPE)
        wait_for(lock.exists)
        wait_for(lambda: s.requests)
        t0 = time.perf_counter()
        r = cli("generate", str(conf))
        took = time.perf_counter() - t0
        line = refused(r, f"{lock}: another run is writing here (pid {first.pid} on host "
                       f"{socket.gethostname()} since ")  # fmt: skip
        assert "generate" in line.split(": ", 3)[-1] and took < 20  # its command, without waiting
        assert first.wait(120) == 0, first.stderr.read().decode()
        s.delay = 0
        ref, ref_conf = served(tmp_path, tmp_path / "ref", s.url)
        assert cli("generate", str(ref_conf)).returncode == 0
        assert transcripts(cfg) == transcripts(ref)  # the first run finished intact
        assert not lock.exists() and not list(transcripts_dir(cfg).glob("*.part*"))


def test_a_stale_lock_of_a_dead_run_is_recovered(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)  # fmt: skip
    with ChatServer(answer) as s:
        cfg, conf = served(tmp_path, tmp_path / "out", s.url, questions=1)
        lock = transcripts_dir(cfg) / "generate.lock"
        lock.parent.mkdir(parents=True)
        holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "command": "generate"}
        lock.write_text(json.dumps(holder))
        r = cli("generate", str(conf))
    assert r.returncode == 0, r.stderr
    recovered = (
        f"{lock}: recovered a stale lock of a run that no longer holds it (pid {holder['pid']}"
    )
    assert recovered in r.stderr
    assert sum(map(len, transcripts(cfg).values())) == 16 and not lock.exists()


# --- Ctrl-C ------------------------------------------------------------------------------------


def interrupt(args: list[str], until, env=None) -> subprocess.CompletedProcess:
    """Run the CLI, send SIGINT (Ctrl-C) once `until()` holds, and wait for it to exit.

    The child gets SIGINT's default disposition back: a shell's background job (`cmd &`) starts
    with it ignored, and Python then never raises KeyboardInterrupt.
    """
    proc = subprocess.Popen(
        command(*args),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(until, timeout=120, poll=0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_ctrl_c_in_generate_says_what_was_kept_and_a_rerun_resumes(tmp_path):
    with ChatServer(answer, delay=0.05) as s:
        ref, ref_conf = served(tmp_path, tmp_path / "ref", s.url, questions=20)
        cfg, conf = served(tmp_path, tmp_path / "out", s.url, questions=20)
        r = interrupt(["generate", str(conf)], until=lambda: lines(cfg) >= 64)
        kept = lines(cfg)
        refused(r, f"interrupted: {kept} of 320 transcripts kept in {transcripts_dir(cfg)}; "
                "re-run the same command to resume", code=130)  # fmt: skip
        assert 64 <= kept < 320
        s.delay = 0
        r = cli("generate", str(conf))
        assert r.returncode == 0, r.stderr
        assert f"{320 - kept} responses ({kept} already written)" in r.stderr
        assert cli("generate", str(ref_conf)).returncode == 0
        assert transcripts(cfg) == transcripts(ref)


@pytest.mark.slow
def test_ctrl_c_in_capture_says_what_was_kept_and_a_rerun_resumes(tmp_path, tiny_model_dir):
    tr = write_transcripts(tmp_path / "tr", make_rows(120))
    whole = capture_config(tmp_path / "whole.toml", tiny_model_dir, tr, tmp_path / "whole")
    assert subprocess.run(command("capture", str(whole)), env=ENV).returncode == 0
    conf = capture_config(tmp_path / "c.toml", tiny_model_dir, tr, tmp_path / "act")
    parts = tmp_path / "act" / "a.parts"
    r = interrupt(["capture", str(conf)], lambda: len(list(parts.glob("block-*.h5"))) >= 30, ENV)
    kept, n = blocks(parts)
    refused(r, f"interrupted: a: {kept} of {n} blocks kept in {parts}; re-run the same command "
            "to resume", code=130)  # fmt: skip
    assert 30 <= kept < n and not leftovers(tmp_path / "act")
    r = subprocess.run(command("capture", str(conf)), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{n - kept} of {n} blocks to compute" in r.stderr
    assert filecmp.cmp(tmp_path / "act" / "a.h5", tmp_path / "whole" / "a.h5", shallow=False)


# --- a hung endpoint -----------------------------------------------------------------------------


def test_the_default_budget_of_a_hung_endpoint_is_two_minutes():
    import openai._constants as oc

    assert BACKOFF_S == (oc.INITIAL_RETRY_DELAY, oc.MAX_RETRY_DELAY)  # the client's own backoff
    for section in (Judge(), Generation()):
        budget = worst_case_s(section.timeout_s, section.max_retries)
        assert budget <= 120, (type(section).__name__, budget)
    assert worst_case_s(1.0, 2) == 1 + 1 + 1 + 0.5 + 1.0


def judged(tmp_path: Path, url: str, **judge):
    """Transcripts of pirate (5 prompts x 2 questions) and a config judging them at `url`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "judge.toml"
    cfg = make_study(
        tmp_path / "out",
        run_name="j",
        roles={"dir": str(ROLES_DIR), "questions": str(QUESTIONS), "question_count": 2,
               "include": ["pirate"], "include_default": False},
        judge={"base_url": url, "model": "test-model", "api_key_env": "PD_NO_SUCH_KEY", **judge},
    )  # fmt: skip
    conf.write_text(dump(cfg))
    rows = [{"system_prompt_idx": p, "question_idx": q, "rollout_idx": 0,
             "messages": [{"role": "user", "content": f"q{q}"}], "response": "Arr",
             "finish_reason": "stop", "n_tokens": 1}
            for p in range(5) for q in range(2)]  # fmt: skip
    out = transcripts_dir(cfg)
    out.mkdir(parents=True)
    (out / "pirate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg, conf


def timed(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = cli(*args)
    return r, time.perf_counter() - t0


@pytest.mark.slow
def test_a_hung_endpoint_fails_within_its_budget_naming_it(tmp_path):
    with ChatServer(delay=3600) as s:  # takes every chat request, never answers
        cfg, conf = judged(tmp_path, s.url, timeout_s=1.0, max_retries=1)
        before = snapshot(transcripts_dir(cfg))
        r, took = timed("judge", str(conf))
        refused(r, f"{s.url} stopped answering: no reply within 1 s, 2 attempt(s)",
                "raise judge.timeout_s")  # fmt: skip
        assert 2.0 <= took < 20  # 2 x 1 s + backoff, plus start-up
        assert snapshot(transcripts_dir(cfg)) == before
        assert not read_rows(cfg.path("scores") / "pirate.jsonl")
        gen, gconf = served(tmp_path, tmp_path / "gen", s.url, timeout_s=1.0, max_retries=0)
        r, took = timed("generate", str(gconf))
        refused(r, f"{s.url} stopped answering: no reply within 1 s, 1 attempt(s)",
                "raise generation.timeout_s")  # fmt: skip
        assert took < 20 and not lines(gen)

    mute = socket.create_server(("127.0.0.1", 0))  # accepts, never reads nor answers
    url = f"http://127.0.0.1:{mute.getsockname()[1]}/v1"
    try:
        _, conf = judged(tmp_path / "mute", url, timeout_s=1.0, max_retries=1)
        r, took = timed("judge", str(conf))
    finally:
        mute.close()
    refused(r, f"{url} stopped answering: no reply within 1 s")
    assert took < 20
