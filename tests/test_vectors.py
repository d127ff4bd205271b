"""Directions in and out: space.h5, llama.cpp GGUF control vectors, upstream assistant-axis .pt."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.spacefile import read_directions
from persona_dynamics.vectors import (
    from_hidden_states_index,
    read_gguf,
    read_upstream_axis,
    read_upstream_capping,
    write_gguf,
)

from helpers import planted_run

rng = np.random.default_rng(0)
DIRS = {1: rng.normal(size=16).astype(np.float32), 3: rng.normal(size=16).astype(np.float32)}


def test_gguf_round_trip_keeps_layers_and_values(tmp_path):
    import gguf

    path = write_gguf(tmp_path / "axis.gguf", DIRS, model_hint="olmo2")
    back, hint = read_gguf(path)
    assert hint == "olmo2" and sorted(back) == [1, 3]
    for layer, v in DIRS.items():
        np.testing.assert_array_equal(back[layer], v)
    reader = gguf.GGUFReader(path)  # what llama.cpp reads: arch and tensor names
    assert bytes(reader.get_field("general.architecture").parts[-1]) == b"controlvector"
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.3"]
    assert not (tmp_path / "axis.gguf.tmp").exists()


def test_gguf_refuses_block_zero_and_other_files(tmp_path):
    with pytest.raises(PersonaDynamicsError, match="cannot act on block 0"):
        write_gguf(tmp_path / "x.gguf", {0: DIRS[1]}, "olmo2")
    assert not list(tmp_path.iterdir())
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(PersonaDynamicsError, match="junk.gguf: not a readable GGUF"):
        read_gguf(tmp_path / "junk.gguf")


def test_hidden_states_indices_shift_by_one():
    assert sorted(from_hidden_states_index({1: DIRS[1], 4: DIRS[3]})) == [0, 3]
    with pytest.raises(PersonaDynamicsError, match="embeddings"):
        from_hidden_states_index({0: DIRS[1]})


def test_upstream_axis_rows_are_blocks(tmp_path):
    axis = torch.randn(4, 16)
    torch.save(axis, tmp_path / "assistant_axis.pt")
    got = read_upstream_axis(tmp_path / "assistant_axis.pt")
    assert sorted(got) == [0, 1, 2, 3]
    np.testing.assert_array_equal(got[2], axis[2].numpy())
    torch.save(torch.randn(16), tmp_path / "flat.pt")
    with pytest.raises(PersonaDynamicsError, match=r"flat.pt: expected one \(n_layers, hidden\)"):
        read_upstream_axis(tmp_path / "flat.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(PersonaDynamicsError, match="bad.pt: not a tensor file"):
        read_upstream_axis(tmp_path / "bad.pt")


def test_upstream_capping_experiments_become_ceilings(tmp_path):
    v1, v2 = torch.randn(16), torch.randn(16)
    config = {
        "vectors": {"l1": {"layer": 1, "vector": v1}, "l2": {"layer": 2, "vector": v2}},
        "experiments": [
            {"id": "layers_1:3-p0.25", "interventions": [
                {"vector": "l1", "cap": 0.5}, {"vector": "l2", "cap": -1.0}]},
            {"id": "layers_2:3-p0.5", "interventions": [{"vector": "l2", "cap": 0.0}]},
        ],
    }  # fmt: skip
    torch.save(config, tmp_path / "capping_config.pt")
    ivs = read_upstream_capping(tmp_path / "capping_config.pt", "layers_1:3-p0.25")
    assert [(iv.mode, iv.direction, iv.layers, dict(iv.values)) for iv in ivs] == [
        ("cap", "ceiling", [1], {1: 0.5}), ("cap", "ceiling", [2], {2: -1.0})]  # fmt: skip
    h = torch.randn(2, 5, 16) * 4
    out = ivs[0].edit(1, h, torch.ones(2, 5, dtype=torch.bool))
    assert (out @ (v1 / v1.norm()) <= 0.5 + 1e-5).all()
    with pytest.raises(PersonaDynamicsError, match=r"no experiment 'p9' \(has: layers_1:3-p0.25"):
        read_upstream_capping(tmp_path / "capping_config.pt", "p9")


def test_space_directions_are_the_analyzed_axis_and_pcs(tmp_path):
    cfg = planted_run.build(tmp_path, adapter=False, across=False)
    space = cfg.path("analysis") / "space.h5"
    axis, pc2 = read_directions(space, "axis"), read_directions(space, "pc2")
    assert sorted(axis) == sorted(pc2) == planted_run.LAYERS
    with h5py.File(space) as h5:
        for layer in planted_run.LAYERS:
            g = h5[f"layer_{layer}"]
            np.testing.assert_array_equal(axis[layer], g["axis"][:])  # raw, not unit
            np.testing.assert_array_equal(pc2[layer], g["components"][1])
            assert np.linalg.norm(axis[layer]) > 1.5
    with pytest.raises(PersonaDynamicsError, match="has 5 components, no pc9"):
        read_directions(space, "pc9")
    with pytest.raises(PersonaDynamicsError, match="no direction 'axes'"):
        read_directions(space, "axes")


def test_export_writes_the_space_axis_as_a_control_vector(tmp_path):
    from persona_dynamics.config import dump

    from helpers.cli import cli

    cfg = planted_run.build(tmp_path, adapter=False, across=False)
    conf = tmp_path / "study.toml"
    conf.write_text(dump(cfg))
    r = cli("vectors", "export", str(conf), "--out", str(tmp_path / "axis.gguf"), "--unit",
            "--scale", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "block 0 left out" in r.stderr  # layers 0, 2, 3 were analyzed
    back, hint = read_gguf(tmp_path / "axis.gguf")
    axis = read_directions(cfg.path("analysis") / "space.h5", "axis")
    assert sorted(back) == [2, 3] and hint == "olmo2"
    for i in (2, 3):
        np.testing.assert_allclose(back[i], 2 * axis[i] / np.linalg.norm(axis[i]), rtol=1e-6)


def test_trait_vectors_are_read_by_name(tmp_path):
    from persona_dynamics.traits.run import write_vectors
    from persona_dynamics.vectors import read_trait

    v = rng.normal(size=(2, 16)).astype(np.float32)
    counts = {"n_pos": 3, "n_neg": 4, "n_answers": 10}
    write_vectors(tmp_path / "vectors.h5", {"formal": v}, [1, 5], {"formal": counts}, {})
    got = read_trait(tmp_path / "vectors.h5", "formal")
    assert sorted(got) == [1, 5]
    np.testing.assert_array_equal(got[5], v[1])
    with pytest.raises(PersonaDynamicsError, match="no trait 'rude' \\(has: formal\\)"):
        read_trait(tmp_path / "vectors.h5", "rude")
