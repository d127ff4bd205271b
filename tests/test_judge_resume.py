"""Killing the judge (kill -9) mid-run and running it again gives the uninterrupted run's scores."""

from __future__ import annotations

import collections

from persona_dynamics.config import dump
from persona_dynamics.jsonl import key_of, read_rows
from persona_dynamics.judge import run_judge

from helpers.chat_server import ChatServer
from helpers.judge import judge_study, plant, planted_judge
from helpers.kill import lines, run_and_kill

ROLES = ("pirate", "cat", "wizard", "knight", "chef", "robot_butler")


def scores_by_key(directory) -> dict:
    out, count = {}, collections.Counter()
    for p in directory.glob("*.jsonl"):
        for row in read_rows(p):
            key = (p.stem, *key_of(row))
            count[key] += 1
            out[key] = (row["score"], row["raw"], row["judge"])
    assert max(count.values()) == 1, "a key was scored twice"
    return out


def test_kill_9_then_rerun_gives_the_uninterrupted_scores(tmp_path):
    with ChatServer(planted_judge, delay=0.04) as server:
        ref = judge_study(tmp_path / "a", server.url, max_in_flight=2)
        truth = plant(ref, ROLES, n_prompts=5)
        expected = scores_by_key(run_judge(ref))
        assert len(expected) == len(truth) == 6 * 5 * 4

        cfg = judge_study(tmp_path / "b", server.url, max_in_flight=2)
        plant(cfg, ROLES, n_prompts=5)
        conf = tmp_path / "b.toml"
        conf.write_text(dump(cfg))
        out = cfg.path("scores")
        run_and_kill(
            ["judge", str(conf)], until=lambda: out.is_dir() and lines(out) >= 32, poll=0.02
        )
        partial = scores_by_key(out)
        assert 32 <= len(partial) < len(expected), "the kill must land mid-run"
        with (out / "pirate.jsonl").open("a") as f:  # as if the kill had torn a line
            f.write('{"system_prompt_idx": 4, "question_idx": 3, "rollout_idx": 0, "sco')
        asked = len(server.requests)
        run_judge(cfg)
        assert scores_by_key(out) == expected
        assert len(server.requests) - asked <= len(expected) - len(partial) + 32  # no full redo
