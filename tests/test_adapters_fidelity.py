"""Fidelity metrics on a worked example: Likert points read back, stance, chrF per category."""

from __future__ import annotations

import pytest

from persona_dynamics.adapters.data import AGREE_WORDS
from persona_dynamics.adapters.fidelity import likert_point, score, stance

FIVE = list(AGREE_WORDS[5])


@pytest.mark.parametrize(
    "text, point",
    [
        ("Strongly agree (5 of 5). Family matters.", 5),
        ("I disagree, mostly.", 2),
        ("Neither agree nor disagree.", 3),
        ("agree", 4),
        ("Probably a 4.", 4),
        ("Maybe 9 out of 10, so 2.", 2),  # out-of-range numbers are skipped
        ("Somewhat... strongly disagree, 5 would be wrong", 1),  # the first point named wins
        ("No idea, honestly.", None),
        ("", None),
    ],
)
def test_likert_point_reads_number_or_word(text, point):
    assert likert_point(text, FIVE) == point


def test_likert_point_custom_scale():
    assert likert_point("Good stuff, 1 would be harsh", ["Bad", "Good"]) == 2
    assert likert_point("goodness", ["Bad", "Good"]) is None


def test_stance_is_side_of_midpoint():
    assert [stance(p, 5) for p in range(1, 6)] == [-1, -1, 0, 1, 1]
    assert [stance(p, 2) for p in (1, 2)] == [-1, 1]


def row(cat, answer, reference="", scale=FIVE):
    return {"category": cat, "answer": answer, "scale": scale, "reference": reference}


def test_score_worked_example():
    records = [
        row("values", 5),  # answers 4: within one, same stance
        row("values", 2),  # answers 1: within one, same stance
        row("values", 3),  # answers 3: exact
        row("politics", 4),  # names no point: a miss, unparsed
        row("politics", 1),  # answers 5: opposite stance
        row("open", "Chess in the park.", "Chess in the park.", None),
        row("open", "I like tea.", "I like tea.", None),
    ]
    answers = [
        "Agree (4 of 5).",
        "Strongly disagree.",
        "3",
        "Hard to say.",
        "Strongly agree!",
        "Chess in the park.",
        "I like tea.",
    ]
    got = score(records, answers)
    assert list(got) == ["open", "politics", "values", "all"]
    assert got["values"] == {
        "n_likert": 3,
        "likert_exact": pytest.approx(1 / 3),
        "likert_within_one": 1.0,
        "stance": 1.0,
        "unparsed": 0.0,
        "n_text": 0,
        "chrf": None,
    }
    p = got["politics"]
    assert (p["likert_exact"], p["likert_within_one"], p["stance"], p["unparsed"]) == (0, 0, 0, 0.5)
    assert got["open"]["n_likert"] == 0 and got["open"]["likert_exact"] is None
    assert got["open"]["chrf"] == pytest.approx(100.0)
    a = got["all"]
    assert (a["n_likert"], a["n_text"]) == (5, 2)
    assert a["likert_exact"] == pytest.approx(1 / 5)
    assert a["likert_within_one"] == pytest.approx(3 / 5)
    assert a["stance"] == pytest.approx(3 / 5)
    assert a["unparsed"] == pytest.approx(1 / 5)


def test_chrf_drops_for_a_different_answer():
    records = [row("open", "x", "I would spend the weekend playing chess in the park.", None)]
    close = score(records, ["I'd spend my weekend playing chess in a park."])["open"]["chrf"]
    far = score(records, ["Quantum chromodynamics."])["open"]["chrf"]
    assert 40 < close < 100 and far < 20


def test_score_refuses_misaligned_answers():
    with pytest.raises(ValueError, match="2 held-out items but 1 answers"):
        score([row("a", 1), row("a", 2)], ["1"])
