"""`preset = "upstream"`: upstream assistant-axis's defaults, where the config's own keys still win.

The values asserted are read off upstream's pipeline (safety-research/assistant-axis: generation
0.7 / 0.9 / 512 tokens, 240 questions, all layers, judge temperature 1 and 10 tokens, 50 score-3
samples per role vector, five default-Assistant prompts), not off our PRESETS table.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from persona_dynamics.config import dump, parse
from persona_dynamics.jsonl import read_rows
from persona_dynamics.transcripts import transcripts_dir
from test_integrity import refused

from helpers.cli import cli

UPSTREAM_DEFAULT = [
    "",
    "You are an AI assistant.",
    "You are a large language model.",
    "You are {model_name}.",
    "Respond as yourself.",
]


def config(tmp_path, text: str):
    path = tmp_path / "study.toml"
    path.write_text('run_name = "p"\n' + text + '[[checkpoints]]\nlabel = "m"\nmodel = "org/m"\n')
    return path


def test_config_check_prints_upstream_values_and_explicit_keys_win(tmp_path):
    path = config(tmp_path, 'preset = "upstream"\n[judge]\nmodel = "gpt-4.1-mini"\n')
    with path.open("a") as f:
        f.write("[analysis]\nmin_samples = 20\n")
    r = cli("config", "check", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(
        "# preset upstream: analysis.min_samples = 20 here, 50 in the preset"
    )
    got = tomllib.loads(r.stdout)
    assert got["preset"] == "upstream"
    g, j, a = got["generation"], got["judge"], got["analysis"]
    assert (g["temperature"], g["top_p"], g["max_tokens"], g["num_rollouts"]) == (0.7, 0.9, 512, 1)
    assert g["max_model_len"] == 2048 and got["roles"]["question_count"] == 240
    assert (j["temperature"], j["max_tokens"], j["model"]) == (1.0, 10, "gpt-4.1-mini")
    assert got["capture"]["layers"] == "all" and got["capture"]["aggregation"] == "mean"
    assert a["min_samples"] == 20 and a["score_categories"] == [3]  # the explicit key won
    prompts = json.loads(Path(got["roles"]["default_prompts"]).read_text())["instruction"]
    assert [p["pos"] for p in prompts] == UPSTREAM_DEFAULT
    plain = cli("config", "check", str(config(tmp_path, "")))  # without: our own defaults
    ours = tomllib.loads(plain.stdout)
    assert ours["analysis"]["min_samples"] == 10 and "default_prompts" not in ours["roles"]
    flag = tomllib.loads(
        cli("config", "check", str(config(tmp_path, "")), "--preset", "upstream").stdout
    )
    assert flag["capture"]["layers"] == "all" and "judge" not in flag  # no [judge], none added


def test_an_unknown_preset_is_one_line_naming_the_key(tmp_path):
    path = config(tmp_path, 'preset = "paper"\n')
    refused(
        cli("config", "check", str(path)),
        f"{path}: preset: unknown preset 'paper' (known: upstream)",
    )
    refused(
        cli("config", "check", str(config(tmp_path, "")), "--preset", "x"),
        "preset: unknown preset 'x'",
    )


def test_generation_with_the_preset_uses_upstream_default_prompts(tmp_path, tiny_model_dir):
    conf = tmp_path / "study.toml"
    data = {
        "run_name": "g",
        "preset": "upstream",
        "output_root": str(tmp_path / "out"),
        "checkpoints": [{"label": "x", "model": str(tiny_model_dir)}],
        "roles": {"include": ["pirate"], "question_count": 1},
        "generation": {"backend": "hf", "max_tokens": 2, "device": "cpu"},
    }
    cfg = parse(data)
    conf.write_text(dump(cfg))
    r = cli("generate", str(conf))
    assert r.returncode == 0, r.stderr
    out = transcripts_dir(cfg)
    rows = sorted(read_rows(out / "default.jsonl"), key=lambda x: x["system_prompt_idx"])
    name = tiny_model_dir.name  # {model_name}: the checkpoint's model id (a directory's name)
    want = [p.replace("{model_name}", name) for p in UPSTREAM_DEFAULT]
    got = [next((m["content"] for m in x["messages"] if m["role"] == "system"), "") for x in rows]
    assert got == want and [x["system_prompt_idx"] for x in rows] == list(range(5))
    assert len(read_rows(out / "pirate.jsonl")) == 5  # the roles' five variants, as upstream
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "upstream"
    assert manifest["preset_departures"] == {"roles.question_count": 1, "generation.max_tokens": 2}
