"""The judge: prompt, parsing, the openai backend against a local server, cache, budget, summary."""

from __future__ import annotations

import csv
import json
import socket

import pytest

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.jsonl import read_rows
from persona_dynamics.judge import run_judge
from persona_dynamics.judges import judge_prompt, parse_score
from persona_dynamics.scores import format_table, load_scores, summarize
from persona_dynamics.transcripts import transcripts_dir

from helpers.chat_server import ChatServer
from helpers.cli import cli
from helpers.judge import judge_study, plant, planted_judge

# --- prompt and parsing --------------------------------------------------------------------------


def test_judge_prompt_shows_rubric_question_response_and_scale():
    msgs = judge_prompt("Talks like a pirate.", "Why is the sky blue?", "Arr, 'tis the sea!")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    for part in ("Talks like a pirate.", "Why is the sky blue?", "Arr, 'tis the sea!"):
        assert user.count(part) == 1
    assert user.index("Why is the sky") < user.index("Arr,")
    assert all(f"{s} = " in user for s in range(4)) and "one digit" in user
    braces = judge_prompt("Rubric {x}", "q {y}", "r {z}")[1]["content"]
    assert "Rubric {x}" in braces and "r {z}" in braces  # no str.format on user text


def test_judge_prompt_fills_a_full_template():
    msgs = judge_prompt("Q: {question}\nA: {answer}\nScore 0-3.", "Why?", "Because {answer}.")
    assert msgs == [{"role": "user", "content": "Q: Why?\nA: Because {answer}.\nScore 0-3."}]


BATTERY = [
    ("3", 3),
    ("2\n", 2),
    ("**1**", 1),
    ("0.", 0),
    ("`2`", 2),
    ("Score: 3", 3),
    ("score: 2/3", 2),
    ("**Score:** 1", 1),
    ("Score: **3**", 3),
    ("Rating = 0", 0),
    ("Final verdict: 1", 1),
    ('{"score": 2}', 2),
    ('```json\n{"score": 3, "reason": "stays in role"}\n```', 3),
    ('{"rating": "1"}', 1),
    ('{"score": 3.0}', 3),
    ("The response stays in character throughout.\n\nScore: 3", 3),
    ("At first I'd say score 1, but the final score: 2", 2),
    ("2/3", 2),
    ("I'd rate it a 2.", 2),
    ("I would give this response 3 out of 3.", 3),
    ("3 - fully in role", 3),
    ("2: partly in role, mentions being an AI", 2),
    # unreadable without guessing: null
    ("", None),
    (None, None),
    ("The response is good.", None),
    ("N/A", None),
    ("Score: 5", None),
    ("Score: 2.5", None),
    ("Score: 10", None),
    ("10", None),
    ("4", None),
    ("-1", None),
    ('{"score": 7}', None),
    ('{"score": true}', None),
    ("2 or 3", None),
    ("It mentions 3 ships and 2 storms.", None),
    ("1/3 of it in role, 3/3 in style", None),
]


@pytest.mark.parametrize(("answer", "score"), BATTERY)
def test_parse_score_battery(answer, score):
    assert parse_score(answer) == score


# --- a run against the local server --------------------------------------------------------------


def test_scores_match_planted_answers_nulls_kept_default_skipped(tmp_path):
    with ChatServer(planted_judge, model="test-judge") as s:
        cfg = judge_study(tmp_path, s.url)
        truth = plant(cfg)
        out = run_judge(cfg)
        assert len(s.requests) == len(truth)  # default transcripts are not judged
    assert load_scores(out) == truth
    assert sorted(p.name for p in out.iterdir()) == [
        "cat.jsonl",
        "judge.json",
        "pirate.jsonl",
        "summary.csv",
    ]
    rows = read_rows(out / "cat.jsonl")
    null = next(r for r in rows if r["score"] is None)
    assert (
        null["raw"] == "Hard to say; the response is ambiguous." and null["judge"] == "test-judge"
    )
    assert set(rows[0]) == {
        "system_prompt_idx",
        "question_idx",
        "rollout_idx",
        "score",
        "judge",
        "raw",
    }
    body = s.requests[0]
    assert body["model"] == "test-judge" and body["temperature"] == 0.0 and body["max_tokens"] == 32

    with (out / "summary.csv").open() as f:
        table = {r["role"]: r for r in csv.DictReader(f)}
    for role in ("pirate", "cat"):
        mine = [v for k, v in truth.items() if k[0] == role]
        assert int(table[role]["n"]) == len(mine)
        assert int(table[role]["null"]) == mine.count(None) > 0
        for sc in range(4):
            assert int(table[role][str(sc)]) == mine.count(sc)
    text = format_table(summarize(load_scores(out)))
    assert text.splitlines()[0].split() == ["role", "n", "0", "1", "2", "3", "null", "mean"]
    assert text.splitlines()[-1].split()[:2] == ["all", str(len(truth))]


def test_requests_overlap_and_survive_429_and_malformed_answers(tmp_path, monkeypatch):
    monkeypatch.setattr("persona_dynamics.openai_client.ChatClient.backoff_s", 0.01)
    faults = [429, "malformed", 500, "nochoices", 429]
    with ChatServer(planted_judge, delay=0.05, faults=faults) as s:
        cfg = judge_study(tmp_path, s.url, max_in_flight=8)
        truth = plant(cfg)
        out = run_judge(cfg)
        assert s.max_in_flight >= 4  # requests really overlap
        assert len(s.requests) == len(truth) + len(faults)  # each fault cost one retry
        assert [x for x in s.statuses if x != 200] == faults
    assert load_scores(out) == truth


def test_budget_cap_then_cache_makes_reruns_free(tmp_path):
    with ChatServer(planted_judge) as s:
        cfg = judge_study(tmp_path, s.url, max_requests=5)
        truth = plant(cfg)
        with pytest.raises(
            PersonaDynamicsError, match=f"budget of 5 requests reached: {len(truth) - 5} "
        ):
            run_judge(cfg)
        assert len(s.requests) == 5 and len(load_scores(cfg.path("scores"))) == 5
        cfg.judge.max_requests = None
        out = run_judge(cfg)  # the rest, and nothing twice
        assert len(s.requests) == len(truth) and load_scores(out) == truth
        for p in out.glob("*.jsonl"):
            p.unlink()
        assert load_scores(run_judge(cfg)) == truth  # scores gone, answers cached: free
        assert len(s.requests) == len(truth)
        cfg.judge.max_tokens = 16  # another request is another cache key
        for p in out.glob("*.jsonl"):
            p.unlink()
        run_judge(cfg)
        assert len(s.requests) == 2 * len(truth)


def test_bad_input(tmp_path, monkeypatch):
    with ChatServer(planted_judge, api_key="right") as s:
        cfg = judge_study(tmp_path, s.url)
        with pytest.raises(PersonaDynamicsError, match="no transcripts here"):
            run_judge(cfg)
        plant(cfg)
        monkeypatch.setenv("PD_KEY", "wrong")
        cfg.judge.api_key_env = "PD_KEY"
        with pytest.raises(PersonaDynamicsError, match=r"rejected the API key \(from \$PD_KEY\)"):
            run_judge(cfg)
        cfg.roles.include = ["wizard"]
        with pytest.raises(PersonaDynamicsError, match="no transcripts for role.*wizard"):
            run_judge(cfg)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    cfg = judge_study(tmp_path, dead)
    with pytest.raises(PersonaDynamicsError, match=f"cannot reach {dead}"):
        run_judge(cfg)
    (transcripts_dir(cfg) / "nosuchrole.jsonl").write_text(
        json.dumps(
            {
                "system_prompt_idx": 0,
                "question_idx": 0,
                "rollout_idx": 0,
                "messages": [{"role": "user", "content": "q"}],
                "response": "r",
            }
        )
        + "\n"
    )
    with pytest.raises(PersonaDynamicsError, match="unknown role.*nosuchrole"):
        run_judge(cfg)
    cfg.judge = None
    with pytest.raises(PersonaDynamicsError, match=r"no \[judge\] section"):
        run_judge(cfg)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    hosted = judge_study(tmp_path / "hosted", None, api_key_env="OPENAI_API_KEY")
    plant(hosted)
    with pytest.raises(PersonaDynamicsError, match="OPENAI_API_KEY .*not set"):
        run_judge(hosted)
    with pytest.raises(PersonaDynamicsError, match="no scores here"):
        load_scores(tmp_path / "nothing")


def test_cli_prints_the_table_and_flags_win(tmp_path):
    from persona_dynamics.config import dump

    with ChatServer(planted_judge) as s:
        cfg = judge_study(tmp_path, "http://127.0.0.1:9/v1")  # the flag below wins over this URL
        truth = plant(cfg)
        conf = tmp_path / "c.toml"
        conf.write_text(dump(cfg))
        r = cli("judge", str(conf), "--base-url", s.url, "--roles", "cat", "--max-in-flight", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["role", "n", "0", "1", "2", "3", "null", "mean"]
    assert lines[1].split()[:2] == ["cat", str(sum(k[0] == "cat" for k in truth))]
    assert lines[-1] == str(cfg.path("scores"))
    assert s.max_in_flight <= 3
