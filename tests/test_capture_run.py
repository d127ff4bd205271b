"""run_capture end to end: stores equal the oracle; kill -9 and resume, shards, merge, refusals."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from persona_dynamics.capture import merge, run_capture
from persona_dynamics.capture.backends import reference_capture
from persona_dynamics.capture.tokens import row_key, tokenize
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.lock import claim
from persona_dynamics.store import ActivationStore, activations_path
from persona_dynamics.toy import single_thread

from helpers.cli import command
from helpers.kill import run_and_kill
from helpers.study import make_study
from helpers.transcripts import make_rows, write_transcripts


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: CI's two cores are shared, and oversubscribed threads crawl."""
    with single_thread():
        yield


def study(tmp_path, model_dir, **capture):
    """A one-checkpoint study over the transcripts in tmp_path/tr, stores in tmp_path/act."""
    checkpoints = capture.pop("checkpoints", [{"label": "a", "model": str(model_dir)}])
    return make_study(
        tmp_path / "out",
        checkpoints=checkpoints,
        capture={
            "transcript_dir": str(tmp_path / "tr"),
            "output_dir": str(tmp_path / "act"),
            "layers": [1, 3],
            "batch_tokens": 300,
            "block_samples": 6,
            **capture,
        },
    )


@pytest.fixture
def rows(tmp_path):
    rows = make_rows(10)
    write_transcripts(tmp_path / "tr", rows)
    return rows


def oracle(model_dir, rows, layers, aggregation="mean", adapter=None):
    from persona_dynamics.config import Checkpoint
    from persona_dynamics.models import load_model, load_tokenizer

    tok = load_tokenizer(str(model_dir))
    samples = tokenize(sorted(rows, key=row_key), tok)
    model = load_model(Checkpoint(label="x", model=str(model_dir), adapter=adapter), "cpu").model
    with torch.inference_mode():
        return reference_capture(model, samples, layers, aggregation), samples


def test_store_equals_the_oracle(tmp_path, rows, tiny_model_dir):
    cfg = study(tmp_path, tiny_model_dir)
    out = run_capture(cfg)
    path = activations_path(cfg, "a")
    assert out == path.parent and not (tmp_path / "act" / "a.parts").exists()
    want, samples = oracle(tiny_model_dir, rows, [1, 3])
    with ActivationStore.open(path) as st:
        assert st.keys() == [s.key for s in samples]
        assert st.attrs["complete"] is True and st.attrs["layers"] == [1, 3]
        assert st.attrs["n_layers"] == 4 and st.attrs["hidden_size"] == 64
        assert st.attrs["span_rule"] == "char-offsets-inside/v1" and st.attrs["backend"] == "hooks"
        assert list(st.n_tokens) == [s.n_response for s in samples]
        for j, layer in enumerate([1, 3]):
            got = st.layer(layer)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want[:, j].numpy()))
            np.testing.assert_allclose(got, want[:, j].numpy(), atol=1e-5, rtol=0)
    stamp = path.stat().st_mtime_ns
    run_capture(cfg)  # complete: skipped
    assert path.stat().st_mtime_ns == stamp


def test_per_token_store(tmp_path, rows, tiny_model_dir):
    cfg = study(tmp_path, tiny_model_dir, aggregation="none", none_max_samples=7)
    run_capture(cfg)
    want, samples = oracle(tiny_model_dir, rows, [1, 3], "none")
    index = {s.key: i for i, s in enumerate(samples)}
    with ActivationStore.open(activations_path(cfg, "a")) as st:
        assert len(st) == 7 and st.attrs["aggregation"] == "none"
        for row, key in enumerate(st.keys()):
            np.testing.assert_allclose(st.tokens(row), want[index[key]].numpy(), atol=1e-5)


def test_adapter_is_applied(tmp_path, rows, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    ckpts = [
        {"label": "base", "model": str(tiny_model_dir)},
        {"label": "persona", "model": str(tiny_model_dir), "adapter": str(tmp_path / "adapter")},
    ]
    cfg = study(tmp_path, tiny_model_dir, checkpoints=ckpts, layers=[3])
    run_capture(cfg)
    want, _ = oracle(tiny_model_dir, rows, [3], adapter=str(tmp_path / "adapter"))
    with (
        ActivationStore.open(activations_path(cfg, "persona")) as st,
        ActivationStore.open(activations_path(cfg, "base")) as b,
    ):
        assert st.attrs["adapter"] == str(tmp_path / "adapter")
        np.testing.assert_allclose(st.layer(3), want[:, 0].numpy(), atol=1e-5)
        assert np.nanmax(np.abs(st.layer(3) - b.layer(3))) > 1e-3
        assert st.attrs["tokens_digest"] == b.attrs["tokens_digest"]


def test_shards_merge_to_the_unsharded_file(tmp_path, rows, tiny_model_dir):
    whole = study(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "whole"))
    run_capture(whole)
    cfg0 = study(tmp_path, tiny_model_dir, shard="0/2")
    assert run_capture(cfg0) and not activations_path(cfg0, "a").exists()
    parts = tmp_path / "act" / "a.parts"
    with pytest.raises(PersonaDynamicsError, match="gap: block"):
        merge(cfg0)
    run_capture(study(tmp_path, tiny_model_dir, shard="1/2"))  # the last shard consolidates
    assert not parts.exists()
    assert filecmp.cmp(activations_path(cfg0, "a"), activations_path(whole, "a"), shallow=False)


def test_merge_refuses_overlap(tmp_path, rows, tiny_model_dir):
    cfg = study(tmp_path, tiny_model_dir, shard="0/2")
    run_capture(cfg)
    run_capture(study(tmp_path, tiny_model_dir, shard="1/2", output_dir=str(tmp_path / "other")))
    parts = tmp_path / "act" / "a.parts"
    for p in (tmp_path / "other" / "a.parts").glob("block-*.h5"):
        shutil.copy(p, parts / p.name)
    shutil.copy(parts / "block-00000.h5", parts / "block-00099.h5")
    with pytest.raises(PersonaDynamicsError, match="overlap: key"):
        merge(cfg)


def test_parts_of_another_plan_are_refused(tmp_path, rows, tiny_model_dir):
    run_capture(study(tmp_path, tiny_model_dir, shard="0/2"))
    with pytest.raises(PersonaDynamicsError, match="a.parts.*plan_digest"):
        run_capture(study(tmp_path, tiny_model_dir, shard="1/2", batch_tokens=500))


def test_stale_lock_of_a_dead_consolidator_is_broken(tmp_path, rows, tiny_model_dir):
    import socket

    cfg = study(tmp_path, tiny_model_dir, shard="0/2")
    run_capture(cfg)
    run_capture(study(tmp_path, tiny_model_dir, shard="1/2", output_dir=str(tmp_path / "o")))
    parts = tmp_path / "act" / "a.parts"
    for p in (tmp_path / "o" / "a.parts").glob("block-*.h5"):
        shutil.copy(p, parts / p.name)
    with claim(parts / "consolidate.lock"), pytest.raises(PersonaDynamicsError, match="another"):
        merge(cfg)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    holder = {"pid": int(dead.stdout), "host": socket.gethostname()}
    (parts / "consolidate.lock").write_text(json.dumps(holder))
    assert merge(cfg) == [activations_path(cfg, "a")]


def test_labels_must_share_shape_and_transcripts(tmp_path, rows, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wide = tmp_path / "wide"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.hidden_size = 32
    type(model)(model.config).save_pretrained(wide)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(wide)
    ckpts = [{"label": "wide", "model": str(wide)}, {"label": "a", "model": str(tiny_model_dir)}]
    with pytest.raises(PersonaDynamicsError, match="checkpoint 'wide' has 4 layers x hidden 32"):
        run_capture(study(tmp_path, tiny_model_dir, checkpoints=ckpts))

    run_capture(study(tmp_path, tiny_model_dir))
    write_transcripts(tmp_path / "tr", make_rows(10, seed=1))
    ckpts = [
        {"label": "a", "model": str(tiny_model_dir)},
        {"label": "b", "model": str(tiny_model_dir)},
    ]
    with pytest.raises(PersonaDynamicsError, match="label 'a' was captured from other transcripts"):
        run_capture(study(tmp_path, tiny_model_dir, checkpoints=ckpts))


def test_size_is_refused_up_front_when_the_disk_is_small(
    tmp_path, rows, tiny_model_dir, monkeypatch
):
    from persona_dynamics.capture import run as run_mod

    real = shutil.disk_usage
    monkeypatch.setattr(run_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(PersonaDynamicsError, match=r"needs .* MB \(.* per label\) but only"):
        run_capture(study(tmp_path, tiny_model_dir))
    assert not (tmp_path / "act").exists()


@pytest.mark.slow
def test_resume_after_kill_9_is_bit_identical(tmp_path, tiny_model_dir):
    """Kill -9 a capture mid-run, rerun: the file equals an uninterrupted run's, bit for bit."""
    write_transcripts(tmp_path / "tr", make_rows(120))
    toml = tmp_path / "c.toml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def config(out):
        toml.write_text(
            f'run_name = "t"\n[[checkpoints]]\nlabel = "a"\nmodel = "{tiny_model_dir}"\n'
            f'[capture]\ntranscript_dir = "{tmp_path / "tr"}"\noutput_dir = "{out}"\n'
            "layers = [0, 3]\nbatch_tokens = 200\nblock_samples = 1\n"
        )
        return toml

    from persona_dynamics.config import load

    run_capture(load(config(tmp_path / "whole")))  # one thread, as the subprocesses
    parts = tmp_path / "act" / "a.parts"
    run_and_kill(
        ["capture", str(config(tmp_path / "act"))],
        until=lambda: len(list(parts.glob("block-*.h5"))) >= 30,
        poll=0.005,
        env=env,
    )
    done = sorted(parts.glob("block-*.h5"))
    with ActivationStore.open(done[0]) as st:
        n_blocks = st.attrs["n_blocks"]
    assert not (tmp_path / "act" / "a.h5").exists() and 30 <= len(done) < n_blocks
    r = subprocess.run(command("capture", str(toml)), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{n_blocks - len(done)} of {n_blocks} blocks to compute" in r.stderr
    assert filecmp.cmp(tmp_path / "act" / "a.h5", tmp_path / "whole" / "a.h5", shallow=False)


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit code, stdout, stderr)."""
    from persona_dynamics.cli import main

    monkeypatch.setattr(sys, "argv", ["persona-dynamics", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_flags_without_a_config(tmp_path, rows, tiny_model_dir, monkeypatch, capsys):
    args = [
        *("capture", "--model-name", str(tiny_model_dir), "--transcript-dir", str(tmp_path / "tr")),
        *("--output-dir", str(tmp_path / "o"), "--layers", "0,2", "--aggregation", "last"),
    ]
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "o")
    with ActivationStore.open(tmp_path / "o" / f"{tiny_model_dir.name}.h5") as st:
        assert st.layers == [0, 2] and st.attrs["aggregation"] == "last" and len(st) == len(rows)
    code, _, err = cli(monkeypatch, capsys, *args[:-4], "--layers", "3;7")
    assert code == 2 and err == (
        "error: --layers '3;7': expected 'middle', 'all', or indices and end-exclusive ranges, "
        "e.g. 3,7,11 or 46:54\n"
    )
    code, _, err = cli(monkeypatch, capsys, *args[:-4], "--layers", "9")
    assert code == 2 and "capture.layers: [9] out of range for a 4-layer model" in err
    code, _, err = cli(monkeypatch, capsys, "capture", "--transcript-dir", "x")
    assert code == 2 and "give a config file, or --model-name" in err
    code, out, _ = cli(monkeypatch, capsys, "capture", "merge", "--model-name", str(tiny_model_dir),
                       "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert code == 0 and out.strip().endswith(f"{tiny_model_dir.name}.h5")


def test_revisions_lists_branches_and_tags(monkeypatch, capsys):
    from types import SimpleNamespace as NS

    import huggingface_hub

    refs = NS(
        branches=[NS(name="main", target_commit="c0"), NS(name="step_100", target_commit="c1")],
        tags=[NS(name="v1", target_commit="c2")],
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_refs", lambda self, model: refs)
    code, out, _ = cli(monkeypatch, capsys, "revisions", "allenai/OLMo-2-1124-7B-Instruct")
    assert code == 0
    assert out.splitlines() == ["branch\tmain\tc0", "branch\tstep_100\tc1", "tag\tv1\tc2"]


def test_one_commit_per_label_is_loaded_and_recorded(tmp_path, rows, tiny_model_dir, monkeypatch):
    """Each label's revision is resolved once; config, tokenizer and weights load at that commit."""
    from persona_dynamics.capture import run as capture_run

    resolved, loaded = [], {}
    real_model, real_config, real_tok = (
        capture_run.load_model,
        capture_run.load_config,
        capture_run.load_tokenizer,
    )

    def resolve(model, revision):  # a new commit each call: a second call would disagree
        resolved.append(revision)
        return f"{len(resolved):040x}"

    def load_model(ckpt, device, dtype, merge, commit):
        loaded.setdefault(ckpt.label, []).append(("weights", commit))
        return real_model(ckpt, device, dtype, merge, commit)

    def load_config(model, revision):
        loaded.setdefault(model, []).append(("config", revision))
        return real_config(model, revision)

    def load_tokenizer(model, revision):
        loaded.setdefault(model, []).append(("tokenizer", revision))
        return real_tok(model, revision)

    monkeypatch.setattr(capture_run, "resolve_commit", resolve)
    monkeypatch.setattr(capture_run, "load_model", load_model)
    monkeypatch.setattr(capture_run, "load_config", load_config)
    monkeypatch.setattr(capture_run, "load_tokenizer", load_tokenizer)
    ckpts = [
        {"label": "a", "model": str(tiny_model_dir), "revision": "step-1"},
        {"label": "b", "model": str(tiny_model_dir), "revision": "main"},
    ]
    cfg = study(tmp_path, tiny_model_dir, checkpoints=ckpts, layers=[3])
    run_capture(cfg)
    assert sorted(resolved) == ["main", "step-1"]  # once per label
    commits = {}
    for label in ("a", "b"):
        with ActivationStore.open(activations_path(cfg, label)) as st:
            commits[label] = st.attrs["commit"]
        assert loaded[label] == [("weights", commits[label])]
    assert commits["a"] != commits["b"]
    # shapes read at each label's commit; the tokenizer at the reference's (the last label)
    assert sorted(loaded[str(tiny_model_dir)]) == sorted(
        [("config", commits["a"]), ("config", commits["b"]), ("tokenizer", commits["b"])]
    )


def test_load_model_loads_the_commit_it_records(monkeypatch, tiny_model_dir):
    """A hub checkpoint loads at the commit given (or resolved once here) and records it."""
    from transformers import AutoModelForCausalLM

    from persona_dynamics import models
    from persona_dynamics.config import Checkpoint

    calls, real = [], AutoModelForCausalLM.from_pretrained

    def from_pretrained(name, **kwargs):
        calls.append(kwargs.get("revision"))
        return real(tiny_model_dir)

    resolved = []
    monkeypatch.setattr(models, "is_local", lambda model: False)
    monkeypatch.setattr(models, "resolve_commit", lambda m, r: resolved.append(r) or "c" * 40)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    ckpt = Checkpoint(label="x", model="org/model", revision="step-5")
    given = models.load_model(ckpt, "cpu", commit="d" * 40)
    assert given.commit == "d" * 40 and calls == ["d" * 40] and resolved == []
    found = models.load_model(ckpt, "cpu")
    assert found.commit == "c" * 40 and calls[-1] == "c" * 40 and resolved == ["step-5"]
