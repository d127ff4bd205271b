"""Issue 14, readers: every file kind of a real small run, corrupted each way, read by its stage.

One run (the tiny model: generate, judge, capture, analyze, compare, report) is built once per
module; each case copies it, breaks one file, runs the stage that reads it through the CLI and
asserts a one-line refusal naming the file (and line, key or row) and that every file is left as
it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from persona_dynamics.config import dump, parse
from test_integrity import refused, snapshot

from helpers.chat_server import ChatServer
from helpers.cli import cli
from helpers.paths import QUESTIONS, ROLES_DIR

TRANSCRIPTS = "out/transcripts/b/tiny/sft"
SCORES = "out/scores/b"
STORES = "out/activations/b"
ANALYSIS = "out/analysis/b"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished run in a directory of its own, every path in its config relative to it."""
    root = tmp_path_factory.mktemp("battery")
    shutil.copytree(tiny_model_dir, root / "tiny")
    (root / "roles").mkdir()
    for name in ("default", "pirate", "cat"):
        shutil.copy(ROLES_DIR / f"{name}.json", root / "roles")
    shutil.copy(QUESTIONS, root / "questions.jsonl")
    with ChatServer(model="judge-a") as s:
        data = {
            "run_name": "b",
            "output_root": "out",
            "checkpoints": [{"label": "base", "model": "tiny"}, {"label": "sft", "model": "tiny"}],
            "roles": {"dir": "roles", "questions": "questions.jsonl", "question_count": 2},
            "generation": {"backend": "hf", "max_tokens": 3, "device": "cpu"},
            "judge": {"base_url": s.url, "model": "judge-a", "api_key_env": "PD_NO_SUCH_KEY"},
            "capture": {"layers": "all", "device": "cpu"},
            "analysis": {"bootstrap": 3, "n_components": 3, "min_samples": 2},
        }
        (root / "study.toml").write_text(dump(parse(data)))
        for stage in ("generate", "judge", "capture", "analyze", "compare", "report"):
            r = cli(stage, "study.toml", cwd=root)
            assert r.returncode == 0, (stage, r.stderr)
    return root


# --- ways to break a file ------------------------------------------------------------------------


def edit_line(n: int, change):
    """Replace line n (1-based) of a JSONL file by `change(row)` (a dict, or bytes as they are)."""

    def run(path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        new = change(json.loads(lines[n - 1]))
        lines[n - 1] = new if isinstance(new, bytes) else json.dumps(new).encode()
        path.write_bytes(b"\n".join(lines))

    return run


def put(**fields):
    return edit_line(1, lambda row: row | fields)


def drop(field: str, n: int = 1):
    return edit_line(n, lambda row: {k: v for k, v in row.items() if k != field})


def not_utf8(n: int = 1):
    return edit_line(n, lambda row: json.dumps(row).encode().replace(b'"', b'"\xff', 1))


def text(old: str, new: str | bytes):
    """Replace the first `old` by `new` (bytes as they are: b"\\xff" is not UTF-8)."""

    def run(path: Path) -> None:
        body = path.read_bytes()
        assert old.encode() in body, old
        path.write_bytes(
            body.replace(old.encode(), new if isinstance(new, bytes) else new.encode(), 1)
        )

    return run


def raw(data: bytes):
    return lambda path: path.write_bytes(data)


def cut(fraction: float):
    """Truncate a file to a fraction of its bytes (a copy or a disk that stopped short)."""

    def run(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return run


def h5_del(name: str, attr: bool = False):
    def run(path: Path) -> None:
        with h5py.File(path, "a") as h5:
            group, _, leaf = name.rpartition("/")
            if attr:
                del (h5[group] if group else h5).attrs[leaf]
            else:
                del h5[name]

    return run


def nan_row(row: int, value: float = np.nan):
    def run(path: Path) -> None:
        with h5py.File(path, "a") as h5:
            acts = h5["acts"]
            block = acts[row]
            block[1, 3] = value
            acts[row] = block

    return run


def csv_cell(line: int, column: str, value: bytes):
    def run(path: Path) -> None:
        rows = path.read_bytes().splitlines()
        header = rows[0].split(b",")
        cells = rows[line - 1].split(b",")
        cells[header.index(column.encode())] = value
        rows[line - 1] = b",".join(cells)
        path.write_bytes(b"\n".join(rows) + b"\n")

    return run


def csv_drop(column: str):
    def run(path: Path) -> None:
        rows = [r.split(",") for r in path.read_text().splitlines()]
        j = rows[0].index(column)
        path.write_text("\n".join(",".join(r[:j] + r[j + 1 :]) for r in rows) + "\n")

    return run


# --- the cases: (file, how it is broken, the stage that reads it, what the refusal names) ---------

T, S = f"{TRANSCRIPTS}/pirate.jsonl", f"{SCORES}/cat.jsonl"
STORE, SPACE = f"{STORES}/sft.h5", f"{ANALYSIS}/space.h5"
CASES = [
    # transcripts, read by judge (role files) and capture (the default Assistant's too)
    pytest.param(
        T,
        put(question_idx="1"),
        "judge",
        [f"{T}:1:", "'question_idx' must be a non-negative integer, not '1'"],
        id="transcript-string-question",
    ),
    pytest.param(
        T,
        drop("rollout_idx", 2),
        "judge",
        [f"{T}:2:", "missing key field 'rollout_idx'"],
        id="transcript-missing-key",
    ),
    pytest.param(
        T,
        drop("response"),
        "judge",
        [f"{T}:1:", "'response' must be a string, not None"],
        id="transcript-missing-response",
    ),
    pytest.param(
        T,
        put(response=None),
        "judge",
        [f"{T}:1:", "'response' must be a string"],
        id="transcript-null-response",
    ),
    pytest.param(
        T,
        put(messages="hi"),
        "judge",
        [f"{T}:1:", "'messages' must be a non-empty list"],
        id="transcript-messages",
    ),
    pytest.param(
        T,
        put(messages=[{"role": "user"}]),
        "judge",
        [f"{T}:1:", "'messages[0]'"],
        id="transcript-message-shape",
    ),
    pytest.param(
        T, put(n_tokens="3"), "judge", [f"{T}:1:", "'n_tokens'"], id="transcript-n-tokens"
    ),
    pytest.param(T, not_utf8(3), "judge", [f"{T}:3:", "not UTF-8"], id="transcript-not-utf8"),
    pytest.param(
        T,
        edit_line(2, lambda _: b"{oops"),
        "judge",
        [f"{T}:2:", "corrupt line"],
        id="transcript-not-json",
    ),
    pytest.param(
        f"{TRANSCRIPTS}/default.jsonl",
        put(system_prompt_idx=-1),
        "capture",
        [f"{TRANSCRIPTS}/default.jsonl:1:", "'system_prompt_idx'"],
        id="transcript-default-capture",
    ),
    pytest.param(
        T,
        put(question_idx=True),
        "capture",
        [f"{T}:1:", "'question_idx'"],
        id="transcript-bool-capture",
    ),
    pytest.param(
        f"{TRANSCRIPTS}/manifest.json",
        cut(0.5),
        "generate",
        [f"{TRANSCRIPTS}/manifest.json:", "invalid JSON"],
        id="manifest-invalid",
    ),
    pytest.param(
        f"{TRANSCRIPTS}/manifest.json",
        raw(b'{"model": "\xff"}'),
        "generate",
        [f"{TRANSCRIPTS}/manifest.json:1:", "not UTF-8"],
        id="manifest-not-utf8",
    ),
    pytest.param(
        f"{TRANSCRIPTS}/manifest.json",
        raw(b"[1]"),
        "generate",
        [f"{TRANSCRIPTS}/manifest.json:", "JSON object"],
        id="manifest-list",
    ),
    # scores, read by analyze and by judge
    pytest.param(
        S,
        put(score="high"),
        "analyze",
        [f"{S}:1:", "score 'high' is not one of 0-3"],
        id="score-non-numeric",
    ),
    pytest.param(S, drop("score", 2), "analyze", [f"{S}:2:", "no 'score'"], id="score-missing"),
    pytest.param(
        S, put(question_idx="0"), "analyze", [f"{S}:1:", "'question_idx'"], id="score-string-key"
    ),
    pytest.param(
        S,
        drop("system_prompt_idx"),
        "judge",
        [f"{S}:1:", "missing key field 'system_prompt_idx'"],
        id="score-missing-key",
    ),
    pytest.param(S, not_utf8(2), "analyze", [f"{S}:2:", "not UTF-8"], id="score-not-utf8"),
    pytest.param(
        S,
        edit_line(1, lambda _: b"[1, 2]"),
        "analyze",
        [f"{S}:1:", "not a JSON object"],
        id="score-not-json",
    ),
    pytest.param(
        f"{SCORES}/judge.json",
        cut(0.5),
        "analyze",
        [f"{SCORES}/judge.json:", "invalid JSON"],
        id="judge-json",
    ),
    pytest.param(
        "out/cache/judge/judge-a.jsonl",
        drop("raw"),
        "judge",
        ["out/cache/judge/judge-a.jsonl:1:", "'raw'"],
        id="judge-cache",
    ),
    # role and question files, read by judge
    pytest.param(
        "roles/pirate.json",
        text('"instruction"', b'"instruction\xff"'),
        "judge",
        ["roles/pirate.json:", "not UTF-8"],
        id="role-not-utf8",
    ),
    pytest.param(
        "roles/cat.json",
        text('"eval_prompt": "', '"eval_prompt": 3, "x": "'),
        "judge",
        ["roles/cat.json:", "unknown field"],
        id="role-wrong-type",
    ),
    pytest.param(
        "roles/cat.json",
        text('"pos": "', '"neg": "'),
        "judge",
        ["roles/cat.json:", "'instruction[0]'"],
        id="role-instruction",
    ),
    pytest.param(
        "roles/default.json",
        cut(0.5),
        "capture",
        ["roles/default.json:", "invalid JSON"],
        id="default-not-json",
    ),
    pytest.param(
        "questions.jsonl",
        text('"id": 1,', '"id": "1",'),
        "judge",
        ["questions.jsonl:2:", "'id' must be an integer"],
        id="question-string-id",
    ),
    pytest.param(
        "questions.jsonl",
        text("?", b"?\xff"),
        "judge",
        ["questions.jsonl:1:", "not UTF-8"],
        id="question-not-utf8",
    ),
    pytest.param(
        "questions.jsonl",
        text('"question": ', '"q": '),
        "judge",
        ["questions.jsonl:1:", "'question'"],
        id="question-missing",
    ),
    # the config
    pytest.param(
        "study.toml",
        text("bootstrap = 3", 'bootstrap = "many"'),
        "analyze",
        ["study.toml", "analysis.bootstrap"],
        id="config-wrong-type",
    ),
    pytest.param(
        "study.toml",
        text("bootstrap = 3", "bootstrap = "),
        "analyze",
        ["study.toml:", "invalid TOML"],
        id="config-not-toml",
    ),
    pytest.param(
        "study.toml",
        text('run_name = "b"', b'run_name = "b\xff"'),
        "analyze",
        ["study.toml:", "not UTF-8"],
        id="config-not-utf8",
    ),
    pytest.param(
        "study.toml",
        text("bootstrap = 3", "bootstrap = 3\nbootstraps = 4"),
        "analyze",
        ["study.toml", "analysis.bootstraps"],
        id="config-unknown-key",
    ),
    # activation stores, read by analyze (the reference) and compare (every label)
    pytest.param(
        STORE,
        h5_del("question_idx"),
        "analyze",
        [STORE, "dataset 'question_idx' missing"],
        id="store-no-question-idx",
    ),
    pytest.param(
        f"{STORES}/base.h5",
        h5_del("acts"),
        "compare",
        [f"{STORES}/base.h5", "dataset 'acts' missing"],
        id="store-no-acts",
    ),
    pytest.param(
        STORE,
        h5_del("layers", attr=True),
        "analyze",
        [STORE, "attribute 'layers' missing"],
        id="store-no-layers",
    ),
    pytest.param(
        STORE,
        h5_del("roles", attr=True),
        "analyze",
        [STORE, "attribute 'roles' missing"],
        id="store-no-roles",
    ),
    pytest.param(
        STORE, cut(0.6), "analyze", [STORE, "not a readable HDF5 store"], id="store-truncated"
    ),
    pytest.param(
        STORE,
        nan_row(5),
        "analyze",
        [
            STORE,
            "NaN or inf activations at layer",
            "the first (role 'cat', prompt 2, question 1, rollout 0)",
        ],
        id="store-nan",
    ),
    pytest.param(
        f"{STORES}/base.h5",
        nan_row(0, np.inf),
        "compare",
        [f"{STORES}/base.h5", "the first (role 'cat', prompt 0, question 0, rollout 0)"],
        id="store-inf",
    ),
    # space.h5 and the JSON beside it, read by the report
    pytest.param(
        SPACE, cut(0.5), "report", [SPACE, "not a readable HDF5 file"], id="space-truncated"
    ),
    pytest.param(
        SPACE,
        h5_del("layer_1/loadings"),
        "report",
        [SPACE, "dataset 'layer_1/loadings' missing"],
        id="space-no-dataset",
    ),
    pytest.param(
        SPACE, h5_del("names"), "report", [SPACE, "dataset 'names' missing"], id="space-no-names"
    ),
    pytest.param(
        SPACE,
        h5_del("lead_layer", attr=True),
        "report",
        [SPACE, "attribute 'lead_layer' missing"],
        id="space-no-lead",
    ),
    pytest.param(
        SPACE,
        h5_del("layer_2/pc1_variance_lo", attr=True),
        "report",
        [SPACE, "attribute 'layer_2/pc1_variance_lo' missing"],
        id="space-no-stat-bound",
    ),
    pytest.param(
        f"{ANALYSIS}/summary.json",
        cut(0.5),
        "report",
        [f"{ANALYSIS}/summary.json:", "invalid JSON"],
        id="summary-invalid",
    ),
    pytest.param(
        f"{ANALYSIS}/summary.json",
        text('"lead_layer"', '"lead"'),
        "report",
        [f"{ANALYSIS}/summary.json", "lead_layer missing"],
        id="summary-no-key",
    ),
    pytest.param(
        f"{ANALYSIS}/dynamics.json",
        raw(b"[]"),
        "report",
        [f"{ANALYSIS}/dynamics.json", "JSON object"],
        id="dynamics-json",
    ),
    # dynamics.csv and labels.csv, read by the report
    pytest.param(
        f"{ANALYSIS}/dynamics.csv",
        cut(0.5),
        "report",
        [f"{ANALYSIS}/dynamics.csv:", "cells where the header has"],
        id="dynamics-truncated",
    ),
    pytest.param(
        f"{ANALYSIS}/dynamics.csv",
        csv_drop("axis"),
        "report",
        [f"{ANALYSIS}/dynamics.csv:1:", "column(s) axis missing"],
        id="dynamics-no-column",
    ),
    pytest.param(
        f"{ANALYSIS}/dynamics.csv",
        csv_cell(3, "z", b"abc"),
        "report",
        [f"{ANALYSIS}/dynamics.csv:3:", "column 'z': 'abc' is not a number"],
        id="dynamics-non-numeric",
    ),
    pytest.param(
        f"{ANALYSIS}/dynamics.csv",
        csv_cell(2, "role", b"\xff"),
        "report",
        [f"{ANALYSIS}/dynamics.csv:2:", "not UTF-8"],
        id="dynamics-not-utf8",
    ),
    pytest.param(
        f"{ANALYSIS}/labels.csv",
        csv_cell(2, "layer", b"two"),
        "report",
        [f"{ANALYSIS}/labels.csv:2:", "column 'layer': 'two'"],
        id="labels-non-numeric",
    ),
]


@pytest.mark.parametrize("name, breaks, stage, parts", CASES)
def test_a_broken_file_is_refused_naming_it(built, tmp_path, name, breaks, stage, parts):
    root = tmp_path / "run"
    shutil.copytree(built, root)
    breaks(root / name)
    before = snapshot(root)
    nowhere = ["--base-url", "http://127.0.0.1:9/v1"] if stage == "judge" else []  # asks nothing
    refused(cli(stage, "study.toml", *nowhere, cwd=root), *parts)
    assert snapshot(root) == before


# --- model directories ---------------------------------------------------------------------------


def model_study(root: Path, model: str) -> Path:
    """A one-role, one-question config generating from `model` (2 tokens, on the CPU)."""
    conf = root / "study.toml"
    data = {
        "run_name": "m",
        "output_root": str(root / "out"),
        "checkpoints": [{"label": "x", "model": model}],
        "roles": {"include": ["pirate"], "question_count": 1, "include_default": False},
        "generation": {"backend": "hf", "max_tokens": 2, "device": "cpu"},
    }
    conf.write_text(dump(parse(data)))
    return conf


@pytest.mark.parametrize(
    "model, remove, message",
    [
        ("nowhere/at/all", [], "nowhere/at/all: local model directory not found"),
        ("./nowhere", [], "./nowhere: local model directory not found"),
        ("empty", ["*"], "empty: not a model directory: no config.json, no tokenizer files "
         "(tokenizer.json or tokenizer_config.json), no weights (*.safetensors or "
         "pytorch_model*.bin)"),
        ("noweights", ["*.safetensors"], "noweights: incomplete model directory: no weights"),
        ("notokenizer", ["tokenizer*"], "notokenizer: incomplete model directory: no tokenizer"),
        ("noconfig", ["config.json"], "noconfig: incomplete model directory: no config.json"),
    ],
)  # fmt: skip
def test_a_model_directory_that_is_missing_or_incomplete_says_what(
    tmp_path, tiny_model_dir, model, remove, message
):
    if remove:
        shutil.copytree(tiny_model_dir, tmp_path / model)
        for pattern in remove:
            for p in (tmp_path / model).glob(pattern):
                p.unlink()
    conf = model_study(tmp_path, model)
    refused(cli("generate", str(conf), cwd=tmp_path), message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jsonl"))
