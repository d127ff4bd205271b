"""Typed study configs: defaults, overrides and errors that name the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_dynamics.config import STAGES, USE_STAGES, Study, dump, load, parse
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.pipeline import skipped

from helpers.paths import ROOT
from helpers.study import make_study

MINIMAL = """
run_name = "t"
[[checkpoints]]
label = "sft"
model = "allenai/OLMo-2-1124-7B-SFT"
[[checkpoints]]
label = "instruct"
model = "allenai/OLMo-2-1124-7B-Instruct"
"""


def write(tmp_path, text):
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


def test_minimal_config_fills_paper_defaults(tmp_path):
    cfg = load(write(tmp_path, MINIMAL))
    assert isinstance(cfg, Study)
    assert cfg.reference_label == "instruct"
    g = cfg.generation
    assert (g.temperature, g.top_p, g.max_tokens) == (0.7, 0.9, 512)
    assert cfg.analysis.min_samples == 10 and cfg.analysis.score_categories == [3, 2]
    assert cfg.capture.layers == "middle"
    assert str(cfg.path("activations")) == "outputs/activations/t"


def test_overrides_win(tmp_path):
    cfg = load(write(tmp_path, MINIMAL), {"generation.temperature": 0.8, "capture.layers": [1, 3]})
    assert cfg.generation.temperature == 0.8 and cfg.capture.layers == [1, 3]


def test_dump_round_trips(tmp_path):
    cfg = load(write(tmp_path, MINIMAL + "\n[capture]\nlayers = [3, 7]\n"))
    again = load(write(tmp_path, dump(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "extra, message",
    [
        ("\n[generation]\ntemprature = 0.5\n", "generation.temprature: unknown key"),
        (
            "\n[generation]\nmax_tokens = 0\n",
            "generation.max_tokens: Input should be greater than 0",
        ),
        (
            "\n[generation.vllm]\ndtype = 'half'\n",
            "generation.vllm: Value error, 'dtype' is set by generation.dtype, not here",
        ),
        ("\n[capture]\nlayers = 'first'\n", "capture.layers"),
        (
            "\n[capture]\naggregation = 'median'\n",
            "capture.aggregation: Input should be 'mean', 'last' or 'none'",
        ),
        ("\n[analysis]\nscore_categories = [4]\n", "analysis.score_categories"),
        ('\nreference = "dpo"\n', "reference names unknown checkpoint 'dpo'"),
        ('\n[[checkpoints]]\nlabel = "sft"\nmodel = "x"\n', "duplicate checkpoint labels: sft"),
        ('\n[[checkpoints]]\nlabel = "a b"\nmodel = "x"\n', "checkpoints[2].label"),
        ('\n[[checkpoints]]\nlabel = "x"\n', "checkpoints[2].model: missing required field"),
    ],
)
def test_errors_name_file_and_key(tmp_path, extra, message):
    # `reference` must sit before the first table to be top-level
    text = (extra + MINIMAL) if extra.startswith("\nreference") else (MINIMAL + extra)
    with pytest.raises(PersonaDynamicsError) as info:
        load(write(tmp_path, text))
    assert "study.toml" in str(info.value)
    assert message in str(info.value)


def test_missing_run_name_and_checkpoints():
    with pytest.raises(PersonaDynamicsError, match="run_name: missing required field"):
        parse({"checkpoints": [{"label": "a", "model": "m"}]}, "x.toml")
    with pytest.raises(PersonaDynamicsError, match="checkpoints: missing required field"):
        parse({"run_name": "r"}, "x.toml")


def test_toml_syntax_error_has_line_and_column(tmp_path):
    with pytest.raises(PersonaDynamicsError, match=r"study.toml:3:\d+: invalid TOML"):
        load(write(tmp_path, 'run_name = "t"\n\nbroken = = 1\n'))


def test_missing_file(tmp_path):
    with pytest.raises(PersonaDynamicsError, match="config file not found"):
        load(tmp_path / "nope.toml")


def test_unknown_checkpoint_lookup(tmp_path):
    cfg = load(write(tmp_path, MINIMAL))
    with pytest.raises(PersonaDynamicsError, match="unknown checkpoint label 'rl'.*sft, instruct"):
        cfg.checkpoint("rl")


def test_build_from_flags_alone_labels_the_one_checkpoint(tmp_path):
    from persona_dynamics.config import build, safe_name

    cfg = build(None, {"run_name": "r", "generation.seed": None}, "org/m", "step 1/2")
    (ckpt,) = cfg.checkpoints
    assert (ckpt.label, ckpt.model, ckpt.revision) == ("step_1_2", "org/m", "step 1/2")
    assert build(None, {"run_name": "r"}, str(tmp_path)).checkpoints[0].label == tmp_path.name
    with pytest.raises(PersonaDynamicsError, match="give a config file, or --model-name"):
        build(None, {"run_name": "r"})
    with pytest.raises(PersonaDynamicsError, match="--run-name"):
        build(None, {}, "org/m")
    assert safe_name("allenai/OLMo-2-1124-7B") == "allenai_OLMo-2-1124-7B"
    assert safe_name("/a//b c/") == "a_b_c"


def test_roles_default_to_the_shipped_set_and_stay_out_of_the_dump(tmp_path):
    from persona_dynamics.roles import shipped_dir, shipped_questions

    cfg = load(write(tmp_path, MINIMAL))
    assert (cfg.roles.dir, cfg.roles.questions) == (None, None)
    assert cfg.roles.role_dir == shipped_dir() and cfg.roles.question_file == shipped_questions()
    assert "dir =" not in dump(cfg).split("[roles]")[1].split("\n[")[0]
    mine = load(write(tmp_path, MINIMAL + '\n[roles]\ndir = "my/roles"\n'))
    assert mine.roles.role_dir == Path("my/roles")


@pytest.mark.parametrize("path", sorted((ROOT / "analysis").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_loads_and_captures_its_lead_layer(path):
    cfg = load(path)
    assert cfg.reference_label in [c.label for c in cfg.checkpoints]
    layers = cfg.capture.layers
    if cfg.analysis.lead_layer is not None and isinstance(layers, list):
        assert cfg.analysis.lead_layer in layers


def test_use_stages_run_before_the_report_and_only_with_their_sections(tmp_path):
    assert STAGES[-1] == "report" and STAGES.index("place") < min(map(STAGES.index, USE_STAGES))
    bare = make_study(tmp_path)
    assert all(skipped(bare, s) for s in USE_STAGES)
    assert "[drift]" not in dump(bare)  # so `run` on a dumped config still skips drift
    full = make_study(
        tmp_path,
        steering={"settings": [{"name": "up", "coefficient": 1.0}]},
        drift={"turns": 2},
        traits={"specs": [str(tmp_path / "t.json")]},
    )
    assert [skipped(full, s) for s in USE_STAGES] == [None] * 4
