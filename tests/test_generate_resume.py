"""Resume after a real kill -9: the rerun ends with exactly the uninterrupted run's transcripts."""

from __future__ import annotations

import pytest

from persona_dynamics.config import load
from persona_dynamics.generation import run_generate
from persona_dynamics.transcripts import read_transcripts, transcripts_dir

from helpers.kill import lines, run_and_kill
from helpers.paths import QUESTIONS, ROLES_DIR


def config(path, model, output_root, batch_tokens):
    path.write_text(
        f'run_name = "resume"\noutput_root = "{output_root}"\n'
        f'[[checkpoints]]\nlabel = "tiny"\nmodel = "{model}"\n'
        f'[roles]\ndir = "{ROLES_DIR}"\nquestions = "{QUESTIONS}"\n'
        'include = ["pirate"]\nquestion_count = 2\n'
        f'[generation]\nbackend = "hf"\nmax_tokens = 6\nnum_rollouts = 2\n'
        f"batch_tokens = {batch_tokens}\n"
    )
    return path


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_key_set(tmp_path, tiny_model_dir):
    reference = run_generate(load(config(tmp_path / "a.toml", tiny_model_dir, tmp_path / "a", 300)))
    expected = read_transcripts(reference)
    assert len(expected) == (5 + 6) * 2 * 2

    conf = config(tmp_path / "b.toml", tiny_model_dir, tmp_path / "b", 300)  # ~3 rows a batch
    out = transcripts_dir(load(conf))
    run_and_kill(["generate", str(conf)], until=lambda: out.is_dir() and lines(out) >= 8, poll=0.05)
    partial = read_transcripts(out)
    assert 8 <= len(partial) < len(expected), "the kill must land mid-run"
    with (out / "pirate.jsonl").open("a") as f:  # as if the kill had torn a line mid-write
        f.write('{"system_prompt_idx": 4, "question_idx": 1, "rollout_idx": 1, "messages": [{"ro')

    run_generate(load(conf))
    after = read_transcripts(out)  # raises on any duplicate key
    key = lambda r: (r["role"], r["system_prompt_idx"], r["question_idx"], r["rollout_idx"])  # noqa: E731
    assert [key(r) for r in after] == [key(r) for r in expected]
    # the resumed run replays the uninterrupted run's batches: the same texts, bit for bit
    assert [r["response"] for r in after] == [r["response"] for r in expected]
    for p in out.glob("*.jsonl"):
        assert p.read_bytes().endswith(b"\n")
