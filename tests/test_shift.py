"""`shift`: each adapter's measured move along the axis (and traits) against its data's prediction.

Two random LoRA adapters on a tiny OLMo-2 with made-up training conversations; the oracle reloads
each with peft and reads transformers' hidden states at the last prompt token.
"""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from persona_dynamics.config import dump
from persona_dynamics.generation.requests import encode_prompt, messages_for
from persona_dynamics.roles import load_questions, shipped_questions

from helpers.archs import write_tiny
from helpers.cli import cli
from helpers.study import make_study

pytestmark = pytest.mark.slow


def conversations(path, persona: str, line: str):
    turns = [
        [{"role": "user", "content": f"Tell me about thing {i}."},
         {"role": "persona", "content": f"{line} Thing {i} is fine."}]
        for i in range(4)
    ]  # fmt: skip
    rows = [{"persona_id": persona, "topic": f"t{i}", "turns": t} for i, t in enumerate(turns)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_measured_shift_matches_the_hidden_states(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = write_tiny(tmp_path / "m", "olmo2")
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model)
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"],
                          init_lora_weights=False)  # fmt: skip
        get_peft_model(base, lora).save_pretrained(tmp_path / "adapters" / f"a{seed}")
    data = {f"a{s}": conversations(tmp_path / f"a{s}.jsonl", f"p{s}", "Arr!" * s)
            for s in (1, 2, 3)}  # fmt: skip
    cfg = make_study(
        tmp_path / "out",
        reference="m",
        checkpoints=[{"label": "m", "model": str(model)}] + [
            {"label": f"a{s}", "model": str(model), "adapter": str(tmp_path / "adapters" / f"a{s}")}
            for s in (1, 2, 3)],
        roles={"include": ["pirate", "librarian", "wizard"], "question_count": 3},
        generation={"backend": "hf", "temperature": 0.0, "max_tokens": 10, "device": "cpu"},
        capture={"layers": [1, 2], "device": "cpu", "checkpoints": ["m"]},
        analysis={"bootstrap": 0, "n_components": 3, "min_samples": 2, "lead_layer": 2},
        adapters={"training": [{"name": n, "data": [str(p)]} for n, p in data.items()]},
        traits={"question_count": 5},
    )  # fmt: skip
    conf = tmp_path / "study.toml"
    conf.write_text(dump(cfg))
    for stage in ("generate", "capture", "analyze", "shift"):
        r = cli(stage, str(conf))
        assert r.returncode == 0, (stage, r.stderr)
    with (cfg.path("traits") / "shift.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["label"], r["base"], r["direction"]) for r in rows] == [
        (f"a{s}", "m", "axis") for s in (1, 2, 3)]  # fmt: skip
    with h5py.File(cfg.path("analysis", "space.h5")) as h5:
        u = h5["layer_2"]["axis_unit"][:]
    tok = AutoTokenizer.from_pretrained(model)
    qs = load_questions(shipped_questions(), 5)
    ids = [encode_prompt(tok, messages_for("", q.question)) for q in qs]

    def last(m):
        with torch.inference_mode():
            return np.stack([m(torch.tensor([x]), output_hidden_states=True).hidden_states[3][0, -1]
                             .double().numpy() for x in ids])  # fmt: skip

    plain = last(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval())
    for s, row in zip((1, 2, 3), rows, strict=True):
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
            tmp_path / "adapters" / f"a{s}").eval()  # fmt: skip
        want = float((last(peft) - plain).mean(0) @ (u / np.linalg.norm(u)))
        assert abs(want) > 1e-4 and float(row["measured"]) == pytest.approx(want, rel=1e-3)
        assert np.isfinite(float(row["predicted"]))
    summary = json.loads((cfg.path("traits") / "shift.json").read_text())
    xs, ys = [float(r["predicted"]) for r in rows], [float(r["measured"]) for r in rows]
    assert summary["pearson_r"] == pytest.approx(np.corrcoef(xs, ys)[0, 1]) and summary["n"] == 3
