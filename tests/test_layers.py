"""The one layer vocabulary: specs resolve to sorted block indices; bad specs name the key."""

from __future__ import annotations

import pytest

from persona_dynamics.config import parse
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.layers import check, middle, resolve


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("middle", 32, [16]),
        ("middle", 5, [2]),
        ("all", 4, [0, 1, 2, 3]),
        ([7, 3, 3, 11], 12, [3, 7, 11]),
        ("3,7,11", 12, [3, 7, 11]),
        ("46:54", 64, [46, 47, 48, 49, 50, 51, 52, 53]),  # end-exclusive
        ("0:2, 10", 12, [0, 1, 10]),
        (" 5 ", 12, [5]),
    ],
)
def test_resolve(spec, n, expected):
    assert resolve(spec, n) == expected


def test_middle_is_half_the_depth():
    assert [middle(n) for n in (1, 4, 16, 33)] == [0, 2, 8, 16]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("3;7", "capture.layers '3;7': expected 'middle', 'all', or indices"),
        ("first", "capture.layers 'first': expected"),
        ("5:5", "capture.layers '5:5': the range 5:5 is empty"),
        ("8:2", "the range 8:2 is empty"),
        ("-1", "capture.layers '-1': layer indices are zero-based and non-negative"),
        ([2, -3], "capture.layers [2, -3]: layer indices are zero-based"),
    ],
)
def test_bad_specs_name_key_and_text(spec, message):
    with pytest.raises(PersonaDynamicsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check(spec, "capture.layers")
    with pytest.raises(PersonaDynamicsError, match="capture.layers"):
        resolve(spec, 64, "capture.layers")


@pytest.mark.parametrize(
    "spec, n, bad", [([4], 4, "[4]"), ("46:54", 50, "[50, 51, 52, 53]"), ("3,4", 4, "[4]")]
)
def test_out_of_range_names_key_and_depth(spec, n, bad):
    message = f"analysis.layers: {bad} out of range for a {n}-layer model (0..{n - 1})"
    with pytest.raises(PersonaDynamicsError) as err:
        resolve(spec, n, "analysis.layers")
    assert str(err.value) == message


@pytest.mark.parametrize("section", ["capture", "analysis"])
def test_config_takes_the_vocabulary_and_names_the_key(section):
    data = {"run_name": "t", "checkpoints": [{"label": "x", "model": "m"}]}
    for spec in ("middle", "all", [1, 3], "46:54", "3,7,11"):
        assert getattr(parse(data | {section: {"layers": spec}}), section).layers == spec
    with pytest.raises(PersonaDynamicsError, match=rf"{section}\.layers: .*'1-3': expected"):
        parse(data | {section: {"layers": "1-3"}})
