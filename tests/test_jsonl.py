"""The keyed JSONL writer/reader: torn last lines are dropped on read and cut before appending."""

from __future__ import annotations

import json

import pytest

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.jsonl import Appender, complete_length, existing_keys, read_rows


def row(i: int) -> dict:
    return {"system_prompt_idx": 0, "question_idx": i, "rollout_idx": 0, "response": f"r{i}"}


def test_append_and_read_back(tmp_path):
    path = tmp_path / "a" / "role.jsonl"
    with Appender(path) as w:
        assert w.write([row(0), row(1)]) == 2
        assert w.write([]) == 0
    with Appender(path) as w:
        w.write([row(2)])
    assert [r["question_idx"] for r in read_rows(path)] == [0, 1, 2]
    assert existing_keys(path) == {(0, 0, 0), (0, 1, 0), (0, 2, 0)}


def test_missing_file_reads_empty(tmp_path):
    assert read_rows(tmp_path / "none.jsonl") == []
    assert existing_keys(tmp_path / "none.jsonl") == set()


def test_torn_last_line_dropped_then_cut_before_append(tmp_path):
    path = tmp_path / "role.jsonl"
    good = "".join(json.dumps(row(i)) + "\n" for i in range(3))
    torn = json.dumps(row(3))[:17]
    path.write_text(good + torn)
    assert [r["question_idx"] for r in read_rows(path)] == [0, 1, 2]
    assert complete_length(path) == len(good.encode())
    with Appender(path) as w:
        w.write([row(4)])
    text = path.read_text()
    assert text == good + json.dumps(row(4)) + "\n"  # the torn bytes are gone, nothing merged


def test_torn_line_without_any_newline(tmp_path):
    path = tmp_path / "role.jsonl"
    path.write_text('{"system_prompt_idx": 0, "que')
    assert read_rows(path) == []
    with Appender(path) as w:
        w.write([row(0)])
    assert read_rows(path) == [row(0)]


def test_complete_length_across_chunks(tmp_path):
    path = tmp_path / "big.jsonl"
    body = "".join(json.dumps(row(i)) + "\n" for i in range(500))
    path.write_text(body + "x" * 300)
    assert complete_length(path, chunk=64) == len(body)


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "role.jsonl"
    path.write_text(json.dumps(row(0)) + "\nnot json\n" + json.dumps(row(1)) + "\n")
    with pytest.raises(PersonaDynamicsError, match=r"role\.jsonl:2: corrupt line"):
        read_rows(path)


def test_row_without_key_field(tmp_path):
    path = tmp_path / "role.jsonl"
    path.write_text('{"question_idx": 1}\n')
    with pytest.raises(PersonaDynamicsError, match="missing key field 'system_prompt_idx'"):
        existing_keys(path)
