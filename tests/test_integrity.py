"""Issue 14, silent wrong data: each case refused through the CLI in one line, earlier files intact.

1 a store captured from another checkpoint; 2 scores of another judge; 3 transcripts outside the
role selection; 4 scores outside 0-3; 5 a --roles that selects nothing; and generation settings
(or role texts) that differ from the transcripts already in a run directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from persona_dynamics.config import dump, parse
from persona_dynamics.generation.requests import messages_for
from persona_dynamics.jsonl import read_rows
from persona_dynamics.roles import load_questions, load_roles
from persona_dynamics.store import ActivationStore, activations_path, write_store
from persona_dynamics.transcripts import transcripts_dir

from helpers.chat_server import ChatServer
from helpers.cli import cli
from helpers.paths import QUESTIONS, ROLES_DIR

ROLES = ["default", *(f"r{i}" for i in range(6))]


def refused(r: subprocess.CompletedProcess, *parts: str) -> str:
    """Assert a one-line `error: ...` with exit 2 and no traceback naming every part; return it."""
    line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert r.returncode == 2, r.stderr
    assert line.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for part in parts:
        assert part in line, (part, line)
    return line


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (to show a refusal left them alone)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def write_config(path: Path, data: dict):
    """A study config file (and the parsed study) from a dict."""
    cfg = parse(data)
    path.write_text(dump(cfg))
    return cfg


# --- 1: a store copied over from another checkpoint ----------------------------------------------


def planted_stores(cfg) -> None:
    """One small store per label, recording its checkpoint as capture does: role clusters."""
    rng = np.random.default_rng(0)
    keys = [(r, p, q, 0) for r in ROLES for p in range(3) for q in range(12)]
    centers = {r: rng.normal(size=8) * 3 for r in ROLES}
    for ckpt in cfg.checkpoints:
        acts = np.stack([centers[k[0]] + rng.normal(size=8) * 0.3 for k in keys])
        attrs = {
            "model": ckpt.model, "revision": ckpt.revision, "adapter": ckpt.adapter,
            "commit": ckpt.revision if len(ckpt.revision) == 40 else None, "n_layers": 2,
            "aggregation": "mean", "transcripts_digest": "T", "tokens_digest": "K",
            "hidden_size": 8,
        }  # fmt: skip
        path = activations_path(cfg, ckpt.label)
        write_store(path, np.stack([acts, 2 * acts], axis=1), keys, [0, 1], attrs)


def store_study(tmp_path: Path, checkpoints: list[dict]):
    conf = tmp_path / "study.toml"
    cfg = write_config(
        conf,
        {
            "run_name": "s",
            "output_root": str(tmp_path / "out"),
            "checkpoints": checkpoints,
            "analysis": {"bootstrap": 3, "n_components": 3, "min_samples": 5},
        },
    )
    planted_stores(cfg)
    return cfg, conf


@pytest.mark.parametrize(
    "fault, message",
    [
        ("copy", "(model 'org/m-SFT', the config's 'org/m')"),
        ("revision", "(revision 'step-9', the config's 'step-1')"),
        ("commit", f"(commit '{'b' * 40}', the config's '{'a' * 40}')"),
    ],
)
def test_compare_refuses_a_store_of_another_checkpoint(tmp_path, fault, message):
    rev = "a" * 40 if fault == "commit" else "step-1"
    cfg, conf = store_study(
        tmp_path,
        [{"label": "base", "model": "org/m", "revision": rev},
         {"label": "sft", "model": "org/m-SFT", "revision": "step-1"}],
    )  # fmt: skip
    r = cli("compare", str(conf))
    assert r.returncode == 0, r.stderr
    base = activations_path(cfg, "base")
    if fault == "copy":  # the SFT store saved as the base store
        shutil.copy(activations_path(cfg, "sft"), base)
    else:
        with h5py.File(base, "a") as h5:
            h5.attrs[fault] = "step-9" if fault == "revision" else "b" * 40
    before = snapshot(tmp_path / "out")
    r = cli("compare", str(conf))
    refused(r, f"{base}: captured from another checkpoint than 'base' {message}", "capture 'base'")
    assert snapshot(tmp_path / "out") == before


def test_local_checkpoints_compare_resolved_and_adapters_count(tmp_path):
    for d in ("ckpts/base", "ckpts/sft", "ckpts/persona"):
        (tmp_path / d).mkdir(parents=True)
    root = tmp_path / "ckpts"
    cfg, conf = store_study(
        tmp_path,
        [{"label": "base", "model": str(root / "base")},
         {"label": "persona", "model": str(root / "base"), "adapter": str(root / "persona")},
         {"label": "sft", "model": str(root / "sft")}],
    )  # fmt: skip
    with h5py.File(activations_path(cfg, "sft"), "a") as h5:  # the same directory, written so
        h5.attrs["model"] = "ckpts/../ckpts/sft"  # relative to the working directory
    r = cli("analyze", str(conf), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = snapshot(tmp_path / "out")
    shutil.copy(activations_path(cfg, "base"), activations_path(cfg, "persona"))  # no adapter
    r = cli("compare", str(conf), cwd=tmp_path)
    refused(r, "persona.h5: captured from another checkpoint than 'persona' (adapter None, the "
            f"config's '{root / 'persona'}')")  # fmt: skip
    shutil.copy(activations_path(cfg, "base"), activations_path(cfg, "sft"))
    r = cli("analyze", str(conf), cwd=tmp_path)
    refused(r, f"sft.h5: captured from another checkpoint than 'sft' (model '{root / 'base'}'")
    assert {k: v for k, v in snapshot(tmp_path / "out").items() if "analysis" in k} == {
        k: v for k, v in before.items() if "analysis" in k
    }


# --- 2, 4, 5: the judge ---------------------------------------------------------------------------


def reply(body: dict) -> str:
    """A judge: 7 (out of range) for the cat's first question, else a readable 2."""
    text = body["messages"][-1]["content"]
    return "7" if "<response>\ncat says 0\n" in text else "Score: 2"


def judged_study(tmp_path: Path, url: str, **judge) -> tuple[object, Path]:
    """Transcripts of pirate, cat and the default (2 prompts x 2 questions), and a config."""
    conf = tmp_path / "study.toml"
    cfg = write_config(
        conf,
        {
            "run_name": "j",
            "output_root": str(tmp_path / "out"),
            "checkpoints": [{"label": "m", "model": "org/model"}],
            "roles": {"dir": str(ROLES_DIR), "questions": str(QUESTIONS), "question_count": 2,
                      "include": ["pirate", "cat"]},
            "judge": {"base_url": url, "model": "judge-a", "api_key_env": "PD_NO_SUCH_KEY"}
            | judge,
        },
    )  # fmt: skip
    out = transcripts_dir(cfg)
    out.mkdir(parents=True)
    qs = load_questions(QUESTIONS, 2)
    for role in [*load_roles(ROLES_DIR, ["pirate", "cat"]), None]:
        name = role.name if role else "default"
        rows = [
            {"system_prompt_idx": spi, "question_idx": q.id, "rollout_idx": 0,
             "messages": list(messages_for(role.instructions[spi] if role else "", q.question)),
             "response": f"{name} says {q.id}", "finish_reason": "stop", "n_tokens": 3}
            for spi in range(2) for q in qs
        ]  # fmt: skip
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg, conf


def test_another_judge_is_refused_and_old_scores_kept(tmp_path):
    with ChatServer(reply, model="judge-a") as s:
        cfg, conf = judged_study(tmp_path, s.url)
        r = cli("judge", str(conf))
        assert r.returncode == 0, r.stderr
        scores = cfg.path("scores")
        manifest = json.loads((scores / "judge.json").read_text())
        assert manifest["judge"] == "judge-a" and set(manifest["rubrics"]) == {"cat", "pirate"}
        before = snapshot(scores)
        for flags, diff in (
            (["--judge-model", "judge-b"], "judge: recorded 'judge-a', now 'judge-b'"),
            ([], "temperature: recorded 0.0, now 0.5"),
        ):
            if not flags:  # a sampling setting changed in the config
                conf.write_text(conf.read_text().replace("temperature = 0.0", "temperature = 0.5"))
            r = cli("judge", str(conf), *flags)
            refused(r, f"{scores / 'judge.json'}: the scores here come from another judge ({diff})",
                    f"delete {scores} to judge again")  # fmt: skip
            assert snapshot(scores) == before
        n = len(s.requests)
    assert n == 8  # 2 roles x 2 prompts x 2 questions, nothing asked by the refused runs


def test_scores_from_before_judge_json_are_checked_by_their_rows(tmp_path):
    with ChatServer(reply, model="judge-a") as s:
        cfg, conf = judged_study(tmp_path, s.url)
        assert cli("judge", str(conf)).returncode == 0
        scores = cfg.path("scores")
        (scores / "judge.json").unlink()  # as a run of an older version left them
        before = snapshot(scores)
        r = cli("judge", str(conf), "--judge-model", "judge-b")
        refused(r, f"{scores / 'cat.jsonl'}: scored by judge 'judge-a', but the config's judge "
                "is 'judge-b'")  # fmt: skip
        assert snapshot(scores) == before
        r = cli("judge", str(conf))  # the same judge: taken as it, and recorded now
        assert r.returncode == 0, r.stderr
        assert json.loads((scores / "judge.json").read_text())["judge"] == "judge-a"


def test_analysis_refuses_scores_of_another_judge(tmp_path):
    from persona_dynamics.config import Judge
    from persona_dynamics.scores import judge_identity, write_judge

    cfg, conf = store_study(tmp_path, [{"label": "m", "model": "org/m"}])
    scores = cfg.path("scores")
    keys = [(r, p, q) for r in ROLES[1:] for p in range(3) for q in range(12)]
    for role in ROLES[1:]:
        rows = [{"system_prompt_idx": p, "question_idx": q, "rollout_idx": 0, "score": 3,
                 "judge": "old-judge", "raw": "3"} for r, p, q in keys if r == role]  # fmt: skip
        scores.mkdir(parents=True, exist_ok=True)
        (scores / f"{role}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    write_judge(scores, judge_identity(Judge(model="old-judge"), {}))
    conf.write_text(conf.read_text() + '\n[judge]\nmodel = "new-judge"\n')
    r = cli("analyze", str(conf))
    refused(r, "judge.json: the scores here come from another judge (judge: recorded "
            "'old-judge', now 'new-judge')")  # fmt: skip
    assert snapshot(cfg.path("analysis")) == {}


def test_out_of_range_scores_are_null_or_refused(tmp_path):
    with ChatServer(reply, model="judge-a") as s:
        cfg, conf = judged_study(tmp_path, s.url)
        r = cli("judge", str(conf))
    assert r.returncode == 0, r.stderr
    scores = cfg.path("scores")
    rows = read_rows(scores / "cat.jsonl")
    sevens = [x for x in rows if x["raw"] == "7"]
    assert len(sevens) == 2 and all(x["score"] is None for x in sevens)  # unparseable: null
    cat = next(line for line in r.stdout.splitlines() if line.startswith("cat "))
    assert cat.split()[1:7] == ["4", "0", "0", "2", "0", "2"]  # n, 0-3, null: counted, reported
    assert "2 of 8 judge answers could not be parsed" in r.stderr
    for bad, shown in ((7, "7"), ("3", "'3'"), (True, "True")):
        text = (scores / "cat.jsonl").read_text()
        first, rest = text.split("\n", 1)
        row = json.loads(first) | {"score": bad}
        (scores / "cat.jsonl").write_text(json.dumps(row) + "\n" + rest)
        r = cli("judge", str(conf), "--base-url", "http://127.0.0.1:9/v1")  # nothing to ask
        refused(r, f"{scores / 'cat.jsonl'}:1: score {shown} is not one of 0-3 or null")


def test_a_roles_flag_that_selects_nothing_is_an_error(tmp_path):
    with ChatServer(reply, model="judge-a") as s:
        cfg, conf = judged_study(tmp_path, s.url)
        before = snapshot(tmp_path / "out")
        for cmd in ("judge", "generate"):
            refused(cli(cmd, str(conf), "--roles", ","), "--roles ',' names no role")
        refused(
            cli("judge", str(conf), "--roles", "default"),
            "nothing to judge: the selection (roles.include = ['default']) holds no role",
        )
        refused(
            cli("judge", str(conf), "--roles", "nosuch"),
            "unknown role(s): nosuch (known: 284 roles, e.g. accountant, actuary",
        )
        assert not s.requests
    assert snapshot(tmp_path / "out") == before


# --- 3: capture takes exactly the selection -------------------------------------------------------


def test_capture_and_analyze_take_exactly_the_selection(tmp_path, tiny_model_dir):
    conf = tmp_path / "study.toml"
    data = {
        "run_name": "c",
        "output_root": str(tmp_path / "out"),
        "checkpoints": [{"label": "x", "model": str(tiny_model_dir)}],
        "roles": {"dir": str(ROLES_DIR), "questions": str(QUESTIONS), "question_count": 2,
                  "include": ["pirate"]},
        "capture": {"layers": "all", "device": "cpu"},
    }  # fmt: skip
    cfg = write_config(conf, data)
    out = transcripts_dir(cfg)
    out.mkdir(parents=True)
    qs = load_questions(QUESTIONS, 3)
    for name in ("default", "pirate", "wizard"):  # wizard: not selected; question 2: past count
        rows = [
            {"system_prompt_idx": 0, "question_idx": q.id, "rollout_idx": 0,
             "messages": list(messages_for("" if name == "default" else f"Be a {name}.",
                                           q.question)),
             "response": f"Arr, matey! {name} {q.id}", "finish_reason": "stop", "n_tokens": 4}
            for q in qs
        ]  # fmt: skip
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = snapshot(out)
    r = cli("capture", str(conf))
    assert r.returncode == 0, r.stderr
    with ActivationStore.open(activations_path(cfg, "x")) as st:
        assert sorted(set(st.keys())) == [
            (role, 0, q, 0) for role in ("default", "pirate") for q in (0, 1)
        ]
    assert snapshot(out) == before
    data["roles"]["include"] = ["pirate", "wizard"]  # analysis under a wider selection
    write_config(conf, data)
    r = cli("analyze", str(conf))
    refused(r, "x.h5: its roles are not the config's selection (roles.include: 1 selected but "
            "absent: wizard)")  # fmt: skip
    data["roles"] |= {"include": ["pirate"], "question_count": 1}
    write_config(conf, data)
    refused(cli("analyze", str(conf)), "x.h5: holds question 1 of role default, outside the "
            "config's selection (roles.question_count = 1)")  # fmt: skip
    assert snapshot(cfg.path("analysis")) == {}


# --- also: one run directory, one way of sampling ------------------------------------------------


def test_generate_refuses_other_settings_or_edited_roles(tmp_path, tiny_model_dir):
    roles = tmp_path / "roles"
    roles.mkdir()
    shutil.copy(ROLES_DIR / "pirate.json", roles)
    conf = tmp_path / "study.toml"
    data = {
        "run_name": "g",
        "output_root": str(tmp_path / "out"),
        "checkpoints": [{"label": "x", "model": str(tiny_model_dir)}],
        "roles": {"dir": str(roles), "questions": str(QUESTIONS), "question_count": 1,
                  "include": ["pirate"], "include_default": False},
        "generation": {"backend": "hf", "max_tokens": 2, "temperature": 0.3, "device": "cpu"},
    }  # fmt: skip
    cfg = write_config(conf, data)
    assert cli("generate", str(conf)).returncode == 0
    out = transcripts_dir(cfg)
    before = snapshot(out)
    manifest = out / "manifest.json"
    r = cli("generate", str(conf), "--temperature", "0.5", "--question-count", "2")
    refused(r, f"{manifest}: this run samples differently", "temperature: recorded 0.3, now 0.5")
    r = cli("generate", str(conf), "--seed", "4")
    refused(r, "seed: recorded 0, now 4")
    role = json.loads((roles / "pirate.json").read_text())
    role["instruction"][0] = {"pos": "You are a pirate captain of the seven seas."}
    (roles / "pirate.json").write_text(json.dumps(role))
    r = cli("generate", str(conf), "--question-count", "2")
    refused(r, f"{manifest}: this run samples differently", "role_digests: pirate changed")
    assert snapshot(out) == before
