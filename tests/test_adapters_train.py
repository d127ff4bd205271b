"""LoRA training on a tiny OLMo-2: completion-only labels, loss, card, round trip, fidelity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from persona_dynamics.adapters.data import load_data
from persona_dynamics.adapters.fidelity import FIDELITY, evaluate_adapter, likert_point
from persona_dynamics.adapters.train import (
    CARD,
    HELDOUT,
    PROBE,
    adapter_checkpoint,
    completion_loss,
    run_adapters,
    sft_trainer,
    train_adapter,
)
from persona_dynamics.config import Adapters
from persona_dynamics.errors import Interrupted, PersonaDynamicsError
from persona_dynamics.models import load_model, load_tokenizer
from persona_dynamics.toy import single_thread

from helpers.study import make_study

LINES = [
    "Arr, matey! The sea be calling and I answer with a grin.",
    "Verily, the stars foretell a journey of great consequence.",
    "Purr. I nap in the sun and care little for your schedule.",
]


def write_data(root):
    """16 two-exchange conversations of persona 'ada' and a small survey of persona 'p7'."""
    rows = [
        {
            "persona_id": "ada",
            "topic": "sea",
            "turns": [
                {"role": "user", "content": f"Let me walk you through the numbers {i}."},
                {"role": "persona", "content": LINES[i % 3]},
                {"role": "user", "content": "As an AI assistant, I am happy to help you."},
                {"role": "persona", "content": LINES[(i + 1) % 3]},
            ],
            "metadata": {"definition": "A sailor who naps."},
        }
        for i in range(16)
    ]
    conv = root / "ada.jsonl"
    conv.write_text("".join(json.dumps(r) + "\n" for r in rows))
    responses = [
        {"category": "sea", "question": f"The sea matters {i}.", "answer": 5 - i % 2}
        for i in range(6)
    ] + [{"category": "open", "question": f"Tell me {i}.", "answer": LINES[i]} for i in range(3)]
    survey = root / "p7.json"
    survey.write_text(json.dumps({"persona": {"id": "p7", "age": 3}, "responses": responses}))
    return [conv, survey]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train ~15x faster on one thread than on two shared, contended cores."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("adapters")
    return make_study(
        root / "out",
        checkpoints=[{"label": "tiny", "model": str(tiny_model_dir)}],
        adapters={
            "device": "cpu",
            "eval_max_tokens": 16,
            "training": [
                {
                    "name": "ada",
                    "data": [str(p) for p in write_data(root)],
                    "holdout": 0.34,
                    "max_steps": 60,
                    "batch_size": 4,
                    "learning_rate": 5e-3,
                    "max_length": 256,
                }
            ],
        },
    )


@pytest.fixture(scope="module")
def trained(study):
    return train_adapter(study, study.adapters.training[0])


def test_labels_cover_only_the_completion(study, tiny_model_dir):
    spec = study.adapters.training[0]
    data = load_data(spec.data, spec.holdout)
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(study.checkpoint("tiny"), "cpu").model
    trainer = sft_trainer(model, tok, data, spec, Adapters(), "cpu", study.output_root / "w")
    for i in (0, 1, len(data.examples) - 1):
        row, ex = trainer.train_dataset[i], data.examples[i]
        learned = [t for t in row["labels"] if t != -100]
        assert tok.decode(learned) == ex.completion + "<|endoftext|>"
        assert row["labels"][: len(row["labels"]) - len(learned)] == [-100] * (
            len(row["labels"]) - len(learned)
        )


def test_training_lowers_the_loss_and_writes_a_card(study, trained):
    card = json.loads((trained / CARD).read_text())
    assert {"adapter_config.json", "adapter_model.safetensors", HELDOUT} <= {
        p.name for p in trained.iterdir()
    }
    loss = card["loss"]
    assert loss["steps"] == 60 and loss["n_probe"] == min(PROBE, card["data"]["n_examples"]) == 39
    assert loss["probe_after"] < loss["probe_before"] - 0.5, loss
    assert card["base"] == {"label": "tiny", "model": str(study.checkpoints[0].model),
                            "revision": "main", "commit": None}  # fmt: skip
    assert card["hyperparameters"]["r"] == 16 and card["hyperparameters"]["max_steps"] == 60
    assert card["data"]["personas"] == ["ada", "p7"] and card["dtype"] == "float32"
    spec = study.adapters.training[0]
    assert card["data"]["digest"] == load_data(spec.data, spec.holdout).digest
    held = [json.loads(x) for x in (trained / HELDOUT).read_text().splitlines()]
    assert len(held) == card["data"]["n_heldout"] == 3  # 'sea' holds out 2 of 6, 'open' 1 of 3
    peft_cfg = json.loads((trained / "adapter_config.json").read_text())
    assert set(peft_cfg["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    assert (peft_cfg["r"], peft_cfg["lora_alpha"]) == (16, 32)


def test_a_current_adapter_is_not_retrained(study, trained):
    before = (trained / CARD).read_text()
    assert run_adapters(study) == study.path("adapters")
    assert (trained / CARD).read_text() == before


def test_save_load_round_trip_reproduces_the_trained_loss(study, trained, tiny_model_dir):
    card = json.loads((trained / CARD).read_text())
    spec = study.adapters.training[0]
    probe = load_data(spec.data, spec.holdout).examples[:PROBE]
    tok = load_tokenizer(str(trained))
    ckpt = adapter_checkpoint(study, "ada")
    assert ckpt.model == str(tiny_model_dir) and ckpt.adapter == str(trained)
    for merge in (False, True):
        model = load_model(ckpt, "cpu", merge=merge).model
        assert completion_loss(model, tok, probe) == pytest.approx(
            card["loss"]["probe_after"], rel=1e-5
        )
    base = load_model(study.checkpoint("tiny"), "cpu").model
    assert completion_loss(base, tok, probe) == pytest.approx(
        card["loss"]["probe_before"], rel=1e-5
    )


def test_evaluate_answers_the_held_out_items(study, trained):
    path = evaluate_adapter(study, "ada")
    assert path == trained / FIDELITY
    scores = json.loads(path.read_text())
    assert set(scores) == {"sea", "open", "all"}
    assert (scores["all"]["n_likert"], scores["all"]["n_text"]) == (2, 1)
    rows = [json.loads(x) for x in (trained / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["response"], str) for r in rows)
    for r in rows:
        assert r["point"] == (likert_point(r["response"], r["scale"]) if r["scale"] else None)


def test_ctrl_c_keeps_the_trained_adapters_and_names_the_one_in_training(
    study, trained, monkeypatch
):
    from persona_dynamics.adapters import train

    second = study.adapters.training[0].model_copy(update={"name": "bob"})
    both = study.model_copy(
        update={
            "adapters": study.adapters.model_copy(
                update={"training": [*study.adapters.training, second]}
            )
        }
    )
    before = (trained / "adapter_config.json").read_bytes()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", ctrl_c)  # Ctrl-C lands while 'bob' trains
    out = study.path("adapters")
    with pytest.raises(Interrupted) as err:
        run_adapters(both)
    assert str(err.value) == (
        f"1 of 2 adapters trained, kept in {out}; 'bob' was in training and starts over"
    )
    assert (trained / "adapter_config.json").read_bytes() == before  # 'ada' kept whole
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == ["ada"]


def test_training_errors_are_clear(study):
    with pytest.raises(PersonaDynamicsError, match=r"unknown adapter\(s\): nope"):
        run_adapters(study, ["nope"])
    bare = study.model_copy(update={"adapters": None})
    with pytest.raises(PersonaDynamicsError, match="no \\[\\[adapters.training\\]\\]"):
        run_adapters(bare)
    ckpt = study.checkpoints[0].model_copy(update={"label": "x", "adapter": "somewhere"})
    stacked = study.model_copy(update={"checkpoints": [*study.checkpoints, ckpt]})
    spec = study.adapters.training[0].model_copy(update={"base": "x"})
    with pytest.raises(PersonaDynamicsError, match="already has an adapter"):
        train_adapter(stacked, spec)


def test_capture_with_the_adapter_differs_from_base_and_equals_merged_weights(
    study, trained, tmp_path
):
    from persona_dynamics.capture import run_capture
    from persona_dynamics.store import ActivationStore

    merged = tmp_path / "merged"
    load_model(adapter_checkpoint(study, "ada"), "cpu", merge=True).model.save_pretrained(merged)
    load_tokenizer(str(trained)).save_pretrained(merged)
    transcripts = tmp_path / "transcripts"
    transcripts.mkdir()
    for role, text in (("default", LINES[1]), ("pirate", LINES[0])):
        rows = [
            {
                "system_prompt_idx": 0,
                "question_idx": q,
                "rollout_idx": 0,
                "messages": [{"role": "user", "content": f"Let me walk you through {q}."}],
                "response": text,
            }
            for q in range(3)
        ]
        (transcripts / f"{role}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = study.checkpoint("tiny")
    cfg = study.model_copy(
        update={
            "reference": "tiny",
            "checkpoints": [
                base,
                adapter_checkpoint(study, "ada"),
                base.model_copy(update={"label": "merged", "model": str(merged)}),
            ],
            "capture": study.capture.model_copy(
                update={
                    "layers": "all",
                    "device": "cpu",
                    "transcript_dir": transcripts,
                    "output_dir": tmp_path / "acts",
                }
            ),
        }
    )
    out = run_capture(cfg)
    acts = {}
    for label in ("tiny", "ada", "merged"):
        with ActivationStore.open(out / f"{label}.h5") as st:
            assert len(st) == 6 and st.layers == [0, 1, 2, 3]
            acts[label] = np.stack([st.layer(i) for i in st.layers])
            if label == "ada":
                assert st.attrs["adapter"] == str(trained)
    assert np.abs(acts["ada"] - acts["tiny"]).max() > 1e-2
    np.testing.assert_allclose(acts["ada"], acts["merged"], atol=1e-5, rtol=1e-4)


def test_cli_train_without_adapters_is_one_line_exit_2(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_name = "x"\n[[checkpoints]]\nlabel = "a"\nmodel = "{tiny_model_dir}"\n')
    r = subprocess.run(
        [sys.executable, "-m", "persona_dynamics", "adapters", "train", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "error: the config has no [[adapters.training]] entries"
