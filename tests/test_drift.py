"""`drift`: conversations turn by turn, each assistant turn projected on the run's axis.

A tiny random OLMo-2 runs the study (generate, capture, analyze, unscored) to have a space; then
two shipped scripts and one upstream-format transcript (its assistant side taken as written).
The oracle recomputes a turn's projection from transformers' `output_hidden_states` and the
space's stored mean and unit axis; the slopes are numpy's least squares.
"""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from persona_dynamics.chat import encode
from persona_dynamics.config import dump
from persona_dynamics.conversations import shipped_dir
from persona_dynamics.drift.run import history

from helpers.archs import write_tiny
from helpers.cli import cli
from helpers.study import make_study

pytestmark = pytest.mark.slow

UPSTREAM = {
    "model": "toy", "domain": "therapy", "turns": 2,
    "conversation": [
        {"role": "user", "content": "I feel low today."},
        {"role": "assistant", "content": "I'm sorry to hear that. What happened?"},
        {"role": "user", "content": "Nothing, really. That's the problem."},
        {"role": "assistant", "content": "Sometimes low days come without a reason."},
    ],
}  # fmt: skip


def read(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_drift_turns_and_slopes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = write_tiny(tmp_path / "m", "olmo2")
    (tmp_path / "up.json").write_text(json.dumps(UPSTREAM))
    cfg = make_study(
        tmp_path / "out",
        checkpoints=[{"label": "m", "model": str(model)}],
        roles={"include": ["pirate", "librarian", "wizard"], "question_count": 3},
        generation={"backend": "hf", "temperature": 0.0, "max_tokens": 10, "device": "cpu"},
        capture={"layers": [1, 2], "device": "cpu"},
        analysis={"bootstrap": 0, "n_components": 3, "min_samples": 2},
        drift={"scripts": [str(shipped_dir() / "coding.json"), str(shipped_dir() / "therapy.json")],
               "transcripts": [str(tmp_path / "up.json")], "turns": 3, "max_tokens": 8,
               "bootstrap": 30},
    )  # fmt: skip
    conf = tmp_path / "study.toml"
    conf.write_text(dump(cfg))
    for stage in ("generate", "capture", "analyze", "drift"):
        r = cli(stage, str(conf))
        assert r.returncode == 0, (stage, r.stderr)
    out = cfg.path("drift")
    turns = read(out / "turns.csv")
    assert list(turns[0]) == ["label", "conversation", "domain", "turn", "layer", "projection", "z"]
    convs = {r["conversation"] for r in turns}
    assert convs == {"coding-parser", "coding-api", "therapy-lonely", "therapy-grief", "up"}
    assert len(turns) == (4 * 3 + 2) * 2  # conversations x turns x layers
    dialogues = {json.loads(x)["conversation"]: json.loads(x)
                 for x in (out / "m.jsonl").read_text().splitlines()}  # fmt: skip
    assert dialogues["up"]["replies"] == [UPSTREAM["conversation"][1]["content"],
                                          UPSTREAM["conversation"][3]["content"]]  # fmt: skip
    assert all(len(d["replies"]) == 3 for n, d in dialogues.items() if n != "up")
    # oracle: the therapy-grief conversation's third turn at layer 1
    from persona_dynamics.conversations import load_script

    conv = next(c for c in load_script(shipped_dir() / "therapy.json") if c.name == "therapy-grief")
    replies = dialogues["therapy-grief"]["replies"]
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    users = dialogues["therapy-grief"]["users"]
    assert users == list(conv.turns[:3])
    enc = encode(tok, history(conv, users, replies, 2), replies[2])
    with torch.inference_mode():
        hs = lm(torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states
    with h5py.File(cfg.path("analysis", "space.h5")) as h5:
        mean, unit = h5["layer_1"]["mean"][:], h5["layer_1"]["axis_unit"][:]
    h = hs[2][0, enc.start : enc.end].mean(0).numpy()
    row = next(r for r in turns if r["conversation"] == "therapy-grief" and r["turn"] == "3"
               and r["layer"] == "1")  # fmt: skip
    assert float(row["projection"]) == pytest.approx(float((h - mean) @ unit), abs=1e-4)
    slopes = {(r["domain"], r["layer"]): r for r in read(out / "slopes.csv")}
    assert sorted(slopes) == [(d, layer) for d in ("coding", "therapy") for layer in ("1", "2")]
    sel = [r for r in turns if r["domain"] == "coding" and r["layer"] == "2" and r["projection"]]
    want = np.polyfit([float(r["turn"]) for r in sel], [float(r["projection"]) for r in sel], 1)[0]
    got = slopes[("coding", "2")]
    assert float(got["slope"]) == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert float(got["slope_lo"]) <= float(got["slope"]) <= float(got["slope_hi"])
    stamp = (out / "m.jsonl").stat().st_mtime_ns
    assert cli("drift", str(conf)).returncode == 0  # resumes: the dialogues are kept
    assert (out / "m.jsonl").stat().st_mtime_ns == stamp
    r = cli("drift", str(conf), "--labels", "nope")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_a_user_simulator_writes_the_later_user_turns(tmp_path):
    model = write_tiny(tmp_path / "m", "olmo2")
    cfg = make_study(
        tmp_path / "out",
        checkpoints=[{"label": "m", "model": str(model)}],
        roles={"include": ["pirate", "librarian", "wizard"], "question_count": 3},
        generation={"backend": "hf", "temperature": 0.0, "max_tokens": 10, "device": "cpu"},
        capture={"layers": [2], "device": "cpu"},
        analysis={"bootstrap": 0, "n_components": 3, "min_samples": 2},
        drift={"scripts": [str(shipped_dir() / "writing.json")], "turns": 4, "max_tokens": 8,
               "user_simulator": "m", "bootstrap": 0},
    )  # fmt: skip
    conf = tmp_path / "study.toml"
    conf.write_text(dump(cfg))
    for stage in ("generate", "capture", "analyze", "drift"):
        r = cli(stage, str(conf))
        assert r.returncode == 0, (stage, r.stderr)
    lines = [json.loads(x) for x in (cfg.path("drift") / "m.jsonl").read_text().splitlines()]
    script = json.loads((shipped_dir() / "writing.json").read_text())["conversations"]
    for line, conv in zip(lines, script, strict=True):
        assert len(line["users"]) == len(line["replies"]) == 4
        assert line["users"][0] == conv["turns"][0]  # the script opens
        assert line["users"][1:] != conv["turns"][1:4]  # the simulator wrote the rest
        assert line["settings"]["user_simulator"] == "m"
    assert len(read(cfg.path("drift") / "turns.csv")) == 2 * 4


@pytest.mark.slow
def test_drift_stage_reads_the_toy_plant_back(demo_run):
    """On the toy, the drift stage (replies generated by each checkpoint, projected on the demo's
    own analysis axis) reads toy.json's drift plant back: per-turn slopes in units of the axis'
    Assistant-to-role-mean distance D within the plant's tolerance on sft, where it is planted,
    and on instruct the drifting families falling faster than the steady ones."""
    from persona_dynamics.drift.run import run_drift
    from persona_dynamics.spacefile import read_space

    cfg, _ = demo_run
    truth = json.loads((cfg.output_root / "toy" / "toy.json").read_text())
    plant, layer = truth["drift"], truth["layer"]
    drift = cfg.drift.model_copy(update={"checkpoints": ["sft", "instruct"], "layers": [layer]})
    out = run_drift(cfg.model_copy(update={"drift": drift}))
    saved = read_space(cfg.path("analysis", "space.h5")).per_layer[layer]
    size = saved.default_axis - float(np.mean(saved.axis_projections))
    slope = {(r["label"], r["domain"]): float(r["slope"]) / size for r in read(out / "slopes.csv")}
    assert set(slope) == {(s, f) for s in ("sft", "instruct") for f in plant["per_turn"]}
    for family, planted in plant["per_turn"].items():
        assert abs(slope["sft", family] - planted) <= plant["claims"]["sft_within"], slope
    drifting = [f for f, v in plant["per_turn"].items() if v < 0]
    steady = [f for f, v in plant["per_turn"].items() if v == 0]
    for label in ("sft", "instruct"):
        assert max(slope[label, f] for f in drifting) < min(slope[label, f] for f in steady), slope
