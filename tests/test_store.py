"""The HDF5 activation store: planted data round-trips by key and layer; overflow is refused."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.store import ActivationStore, write_store

ATTRS = {"model": "m", "aggregation": "mean", "dtype": "float32", "commit": None}


def planted(n=50, layers=3, hidden=8, seed=0):
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(n, layers, hidden)).astype(np.float32)
    roles = ["pirate", "default", "wizard"]
    keys = [(roles[i % 3], i % 5, i // 5, i % 2) for i in range(n)]
    return acts, keys


def test_round_trip_sorted_by_key(tmp_path):
    acts, keys = planted()
    path = write_store(tmp_path / "a.h5", acts, keys, [2, 5, 9], ATTRS, np.arange(len(keys)))
    with ActivationStore.open(path) as st:
        assert st.keys() == sorted(keys) and len(st) == len(keys)
        assert st.roles == ["default", "pirate", "wizard"] and st.layers == [2, 5, 9]
        order = [keys.index(k) for k in list(st.keys())]
        np.testing.assert_array_equal(st.layer(5), acts[order, 1])
        np.testing.assert_array_equal(st.n_tokens, np.arange(len(keys))[order])
        rows = [7, 3, 3, 40]
        np.testing.assert_array_equal(st.layer(9, rows), acts[order][rows, 2])
        mask = np.zeros(len(keys), bool)
        mask[[1, 4]] = True
        np.testing.assert_array_equal(st.layer(2, mask), acts[order][[1, 4], 0])
        blocks = list(st.iter_layer(2, chunk=16))
        assert [s.start for s, _ in blocks] == [0, 16, 32, 48]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), acts[order, 0])
        assert st.attrs["commit"] is None and st.attrs["complete"] is True
        assert st.attrs["model"] == "m" and st.attrs["layers"] == [2, 5, 9]


def test_chunks_hold_one_layer_of_many_samples(tmp_path):
    acts, keys = planted(n=3000, hidden=64)
    path = write_store(tmp_path / "a.h5", acts, keys, [0, 1, 2], ATTRS)
    with h5py.File(path) as f:
        rows, one, hidden = f["acts"].chunks
        assert one == 1 and hidden == 64 and rows > 100


def test_unknown_layer_names_file_and_layers(tmp_path):
    acts, keys = planted()
    path = write_store(tmp_path / "a.h5", acts, keys, [2, 5, 9], ATTRS)
    with ActivationStore.open(path) as st, pytest.raises(PersonaDynamicsError) as e:
        st.layer(4)
    assert "a.h5" in str(e.value) and "[2, 5, 9]" in str(e.value)


def test_float16_refuses_overflow_and_leaves_nothing(tmp_path):
    acts, keys = planted()
    acts[3, 1, 2] = 7e4
    with pytest.raises(PersonaDynamicsError, match="float16"):
        write_store(tmp_path / "a.h5", acts, keys, [0, 1, 2], {**ATTRS, "dtype": "float16"})
    assert list(tmp_path.iterdir()) == []


def test_float16_stores_in_range_values(tmp_path):
    acts, keys = planted()
    path = write_store(tmp_path / "a.h5", acts, keys, [0, 1, 2], {**ATTRS, "dtype": "float16"})
    with ActivationStore.open(path) as st:
        order = [keys.index(k) for k in list(st.keys())]
        np.testing.assert_allclose(st.layer(1), acts[order, 1], rtol=1e-3, atol=1e-3)
        assert st.f["acts"].dtype == np.float16


def test_ragged_tokens(tmp_path):
    rng = np.random.default_rng(1)
    toks = [rng.normal(size=(n, 2, 4)).astype(np.float32) for n in (3, 0, 5)]
    keys = [("b", 0, 0, 0), ("a", 0, 1, 0), ("a", 0, 0, 0)]
    path = write_store(tmp_path / "t.h5", toks, keys, [1, 3], {**ATTRS, "aggregation": "none"})
    with ActivationStore.open(path) as st:
        assert st.keys() == sorted(keys) and list(st.n_tokens) == [5, 0, 3]
        np.testing.assert_array_equal(st.tokens(0), toks[2])
        np.testing.assert_array_equal(st.tokens(2, layer=3), toks[0][:, 1])
        assert st.tokens(1).shape == (0, 2, 4)
        with pytest.raises(PersonaDynamicsError, match="per-token"):
            st.layer(1)


def test_bad_input_is_refused(tmp_path):
    acts, keys = planted()
    with pytest.raises(PersonaDynamicsError, match="duplicate keys"):
        write_store(tmp_path / "a.h5", acts[:2], [keys[0], keys[0]], [0, 1, 2], ATTRS)
    with pytest.raises(PersonaDynamicsError, match="not found"):
        ActivationStore.open(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(PersonaDynamicsError, match="junk.h5"):
        ActivationStore.open(tmp_path / "junk.h5")
