"""Shared fixtures: a tiny random OLMo-2 model, the toy organism, the offline demo run and its
steering grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import cli
from helpers.tiny import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained Olmo2ForCausalLM (4 layers, hidden 64) with the OLMo-2 chat tokenizer."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-olmo2"))


@pytest.fixture(scope="session")
def toy_family():
    """The toy organism, built once per content hash (about four minutes) and then reused."""
    from persona_dynamics.toy import cached_build

    return cached_build()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, toy_family):
    """The offline demo, run once per test session: every stage on the toy organism."""
    from persona_dynamics.pipeline import demo_config, run_study

    out = tmp_path_factory.mktemp("demo")
    cfg = demo_config(out)
    outputs = run_study(cfg)
    return cfg, outputs


@pytest.fixture(scope="session")
def demo_steering(demo_run, tmp_path_factory):
    """The demo config's calibrate and steer (what `demo --all` adds), run through the CLI on the
    demo's outputs once per test session; (config, toy.json)."""
    import json

    from persona_dynamics.config import dump

    cfg, _ = demo_run
    conf = tmp_path_factory.mktemp("steer") / "demo.toml"
    conf.write_text(dump(cfg))
    for stage in ("calibrate", "steer"):
        r = cli(stage, str(conf))
        assert r.returncode == 0, (stage, r.stderr[-2000:])
    return cfg, json.loads((cfg.output_root / "toy" / "toy.json").read_text())
