"""The toy organism: checkpoints load through the project's loader, sampled answers carry the role's
style, roles are separable in activations, the planted stage order and persona geometry are in the
raw activations, the toy judge agrees with the planted scores, and a seed gives the same weights
bit for bit.

Activations here are read with a plain forward hook, one conversation at a time (no padding), an
independent path from the build's own batched measurement.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from persona_dynamics import chat, toy
from persona_dynamics.config import Checkpoint
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.generation.requests import messages_for
from persona_dynamics.judges import parse_score
from persona_dynamics.models import load_model, load_tokenizer
from persona_dynamics.space import PersonaSpace

SAMPLED_ROLES = ["pirate", "cat", "robot_butler", "cowboy", "oracle", "default"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on shared cores, thread contention makes tiny forwards 100x slower."""
    with toy.single_thread():
        yield


@pytest.fixture(scope="module")
def src() -> toy.Source:
    return toy.Source.load()


@pytest.fixture(scope="module")
def tok(toy_family):
    return load_tokenizer(str(toy_family.checkpoints["instruct"]))


def model(family: toy.ToyFamily, label: str):
    """A stage (or the judge) loaded through the project's model loader."""
    path = family.judge if label == "judge" else family.checkpoints[label]
    return load_model(Checkpoint(label=label, model=str(path)), device="cpu").model


def response_tokens(net, tok, examples: list[toy.Example], layer: int) -> list[np.ndarray]:
    """Residuals after block `layer` at each response's tokens, read with a forward hook."""
    seen = {}
    handle = net.model.layers[layer].register_forward_hook(lambda m, i, o: seen.update(h=o))
    out = []
    try:
        with torch.no_grad():
            for e in examples:
                enc = chat.encode(tok, list(e.messages), e.response)
                net(torch.tensor([enc.input_ids]))
                out.append(seen["h"][0, enc.start : enc.end].double().numpy())
    finally:
        handle.remove()
    return out


def response_means(net, tok, examples: list[toy.Example], layer: int) -> np.ndarray:
    """Mean residual after block `layer` over each response's tokens."""
    return np.stack([h.mean(0) for h in response_tokens(net, tok, examples, layer)])


def test_checkpoints_load_through_the_model_loader(toy_family, tok):
    truth = toy_family.truth
    assert truth["stages"] == ["base", "sft", "dpo", "rlvr-1", "rlvr-2", "instruct"]
    assert list(toy_family.checkpoints) == truth["stages"]
    for label in [*truth["stages"], "judge"]:
        net = model(toy_family, label)
        assert type(net).__name__ == "Olmo2ForCausalLM"
        assert net.config.num_hidden_layers == truth["model_config"]["num_hidden_layers"] == 4
        path = toy_family.judge if label == "judge" else toy_family.checkpoints[label]
        own = load_tokenizer(str(path))
        assert own.is_fast and own.bos_token == own.eos_token == "<|endoftext|>"
        assert (own.chat_template is None) == (label == "base"), label  # base: no template
    text = chat.prompt_text(
        tok, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    )
    assert text == "<|endoftext|><|system|>\nS\n<|user|>\nQ\n<|assistant|>\n"
    for special in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert truth["expected_order"] == truth["stages"][1:]
    assert set(truth["styles"]) == {*toy.DEMO_ROLES, "default"}


@pytest.mark.parametrize("label", ["sft", "instruct"])
def test_sampled_answers_carry_the_role_style(toy_family, tok, src, label):
    """HF sampling at temperature 0.7 under role prompts: most answers carry the role's markers
    and no other role's markers compete (answers drifting to the Assistant are the plant)."""
    by_name = {r.name: r for r in [*src.roles, src.default]}
    questions = src.split(held_out=True)
    prompts, who = [], []
    for name in SAMPLED_ROLES:
        role = by_name[name]
        for k in range(10):
            system = role.instructions[k % len(role.instructions)].replace(
                "{model_name}", "ToyOLMo"
            )
            question = src.questions[questions[k]].question
            prompts.append(chat.prompt_text(tok, list(messages_for(system, question))))
            who.append(name)
    batch = tok(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    torch.manual_seed(0)
    out = model(toy_family, label).generate(
        **batch, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=64
    )
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    styles = toy.STYLES | {"default": toy.ASSISTANT}
    hits = []
    for name in SAMPLED_ROLES:
        mine = [t for t, w in zip(texts, who, strict=True) if w == name]
        own = [toy.marker_count(t, styles[name]) for t in mine]
        hits += [n >= 2 for n in own]
        rivals = [s for r, s in toy.STYLES.items() if r != name]
        rival = max(sum(toy.marker_count(t, s) for t in mine) for s in rivals)
        assert sum(own) > 2 * rival, (name, mine)
    assert np.mean(hits) >= 0.7, list(zip(who, texts, strict=True))


@pytest.mark.parametrize("label", ["sft", "instruct"])
def test_roles_are_separable_and_the_assistant_distinct(toy_family, tok, src, label):
    """Nearest role centroid on held-out answers at the middle layer (chance: 1 in 25)."""
    examples = src.fixed(8, np.random.default_rng(7))
    x = response_means(model(toy_family, label), tok, examples, toy_family.truth["layer"])
    who = np.array([e.role for e in examples])
    fit = np.array([k % 8 < 4 for k in range(len(examples))])
    names = list(dict.fromkeys(who))
    centroids = np.stack([x[fit & (who == r)].mean(0) for r in names])
    dist = ((x[~fit, None, :] - centroids[None]) ** 2).sum(-1)
    guess = np.array(names)[dist.argmin(1)]
    assert np.mean(guess == who[~fit]) >= 0.9
    assert np.all((guess == "default") == (who[~fit] == "default"))  # the Assistant is its own


@pytest.mark.slow
def test_planted_stage_order_is_in_the_raw_activations(toy_family, tok, src):
    """On fixed held-out text, the mean role projection on instruct's Assistant Axis rises stage by
    stage by the planted fraction of the SFT gap, and the default Assistant stays put."""
    truth = toy_family.truth
    examples = src.fixed(6, np.random.default_rng(11))
    who = np.array([e.role for e in examples])
    names = [r for r in dict.fromkeys(who) if r != "default"]
    roles_at, default_at = {}, {}
    for label in truth["stages"]:
        x = response_means(model(toy_family, label), tok, examples, truth["layer"])
        roles_at[label] = np.stack([x[who == r].mean(0) for r in names])
        default_at[label] = x[who == "default"].mean(0)
    mu = roles_at["instruct"].mean(0)
    axis = default_at["instruct"] - mu
    axis /= np.linalg.norm(axis)
    p_roles = {s: float(((v - mu) @ axis).mean()) for s, v in roles_at.items()}
    p_default = {s: float((v - mu) @ axis) for s, v in default_at.items()}
    order = truth["expected_order"]
    assert all(p_roles[a] < p_roles[b] for a, b in pairwise(order)), p_roles
    gap = p_default["sft"] - p_roles["sft"]
    for stage, planted in truth["expected_effect"].items():
        closed = (p_roles[stage] - p_roles["sft"]) / gap
        assert closed == pytest.approx(planted, abs=0.08), stage
        assert closed == pytest.approx(truth["measured"]["axis"][stage]["closed"], abs=0.05), stage
        assert abs(p_default[stage] - p_default["sft"]) < 0.2 * gap, stage  # seen: < 0.12


@pytest.mark.slow
def test_planted_geometry_in_the_raw_activations(toy_family, tok, src):
    """On fresh held-out text, instruct's persona space has the geometry toy.json says was planted
    (the paper's): PC1 is the Assistant Axis at every planted layer, the roles lie along it in the
    planted order, the default sits at PC1's end and inside PCs 2-10."""
    truth = toy_family.truth
    plan, claims = truth["geometry"], truth["geometry"]["claims"]
    assert set(plan["order"]) == set(toy.DEMO_ROLES) and len(plan["order"]) == len(toy.DEMO_ROLES)
    assert plan["layers"] == list(range(1, truth["spec"]["layers"]))
    examples = src.fixed(10, np.random.default_rng(13))
    who = np.array([e.role for e in examples])
    names = [r for r in dict.fromkeys(who) if r != "default"]
    for label in ("base", "instruct"):
        net = model(toy_family, label)
        for layer in plan["layers"]:
            x = response_means(net, tok, examples, layer)
            vectors = np.stack([x[who == r].mean(0) for r in names])
            space = PersonaSpace().fit(vectors, x[who == "default"].mean(0), np.ones(len(names)))
            cos = space.cos_pc1_axis_
            if label == "base":  # the same structure, weaker; unplanted
                assert cos > claims["base_cos_pc1_axis_above"], (layer, cos)
                continue
            assert cos >= claims["cos_pc1_axis_every_layer"], (layer, cos)
            rho = spearmanr(space.projections_[:, 0], [plan["likeness"][r] for r in names])[0]
            assert rho >= claims["spearman_pc1_likeness"], (layer, rho)
            if layer != truth["layer"]:
                continue
            pos = space.default_position_
            assert cos >= claims["cos_pc1_axis_lead"], cos
            assert abs(1 - pos[0]) <= claims["end_within"], pos
            lo, hi = claims["position_pc2_10"]
            assert np.all((pos[1:10] >= lo) & (pos[1:10] <= hi)), pos
            lo, hi = claims["n_pcs_70"]
            assert lo <= space.n_target_ <= hi, space.explained_variance_ratio_


def test_planned_offsets_across_g_are_flatter_and_scaled_to_the_spread():
    """The geometry plan's offsets across g stay across g, carry `spread` times the variance of
    the offsets along it, and share it out more evenly than the natural ones (top direction)."""
    from persona_dynamics.toy.geometry import across

    rng = np.random.default_rng(0)
    g = np.eye(16)[0]
    natural = rng.standard_normal((24, 16)) * np.geomspace(3, 0.1, 16)
    natural -= np.outer(natural @ g, g)
    along = np.linspace(-1.0, 1.0, 24)
    planned = across(natural, along, 1.5)
    np.testing.assert_allclose(planned @ g, 0.0, atol=1e-12)
    np.testing.assert_allclose((planned**2).sum(), 1.5 * (along**2).sum())

    def top_share(x):
        s = np.linalg.svd(x, compute_uv=False) ** 2
        return s[0] / s.sum()

    assert top_share(planned) < 0.7 * top_share(natural), (top_share(planned), top_share(natural))


def test_bucketed_batches_cover_every_item_and_pad_little():
    """Length-bucketed batches (the plain LM phases) still visit each item once per pass, and
    pad far less than unbucketed ones; bucket 1 is the plain permutation, cut in order."""
    from persona_dynamics.toy.train import batches

    rng = np.random.default_rng(0)
    lengths = rng.choice([60, 250], size=256, p=[0.8, 0.2]).tolist()
    bucketed = list(batches(lengths, 16, 16, np.random.default_rng(1), bucket=8))
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(256))
    plain = list(batches(lengths, 16, 16, np.random.default_rng(1)))
    order = np.random.default_rng(1).permutation(256)
    assert [sorted(b) for b in plain] == [sorted(order[k : k + 16]) for k in range(0, 256, 16)]

    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    assert padded(bucketed) < 0.6 * padded(plain), (padded(bucketed), padded(plain))


def test_steering_plant_shifts_scores_a_step_per_half_unit():
    from persona_dynamics.toy.steer import shifted

    assert [shifted(3, c) for c in (-1, -0.5, 0, 0.5, 1)] == [3, 3, 3, 2, 1]
    assert [shifted(2, c) for c in (-1, -0.5, 0, 0.5, 1)] == [3, 3, 2, 1, 1]
    assert [shifted(0, c) for c in (-1, -0.5, 0, 0.5, 1)] == [2, 1, 0, 0, 0]  # refusals stay


@pytest.mark.slow
def test_planted_steering_moves_the_judge_score(toy_family, tok, src):
    """Adding c times instruct's Assistant Axis (in the layer's mean-norm units) at the planted
    layer, through the project's steering hooks, moves the toy judge's scores of sampled answers
    to fresh held-out role prompts as toy.json's steering plant says: monotonically down in c, by
    the planted score steps from the unsteered scores."""
    from persona_dynamics.interventions import Intervention
    from persona_dynamics.judges import judge_prompt
    from persona_dynamics.steering.apply import steer
    from persona_dynamics.toy.steer import predicted

    plant = toy_family.truth["steering"]
    (layer,) = plant["layers"]
    net, judge = model(toy_family, "instruct"), model(toy_family, "judge")
    examples = src.fixed(3, np.random.default_rng(17))
    who = np.array([e.role for e in examples])
    tokens = response_tokens(net, tok, examples, layer)
    x = np.stack([h.mean(0) for h in tokens])
    axis = torch.tensor(x[who == "default"].mean(0) - x[who != "default"].mean(0))
    norm = float(np.linalg.norm(np.concatenate(tokens), axis=1).mean())  # as calibrate measures
    asked = [e for e in examples if e.role != "default"]
    rubric = {r.name: r.eval_prompt for r in src.roles}
    prompts = [chat.prompt_text(tok, list(e.messages)) for e in asked]
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left",
                add_special_tokens=False)  # fmt: skip
    means = []
    for c in plant["grid"]:
        iv = Intervention("add", {layer: axis}, coefficient=c, unit="norm", norms={layer: norm})
        torch.manual_seed(1)
        with torch.no_grad(), steer(net, iv):
            out = net.generate(**batch, do_sample=True, temperature=0.7, top_p=0.9,
                               max_new_tokens=64)  # fmt: skip
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        asks = [chat.prompt_text(tok, judge_prompt(rubric[e.role], e.messages[-1]["content"], t))
                for e, t in zip(asked, texts, strict=True)]  # fmt: skip
        jb = tok(asks, return_tensors="pt", padding=True, padding_side="left",
                 add_special_tokens=False)  # fmt: skip
        said = judge.generate(**jb, do_sample=False, max_new_tokens=3)
        answers = tok.batch_decode(said[:, jb["input_ids"].shape[1] :], skip_special_tokens=True)
        scores = [parse_score(t) for t in answers]
        means.append(scores)
    base = [s for s in means[plant["grid"].index(0.0)] if s is not None]
    mean = [np.mean([s for s in m if s is not None]) for m in means]
    expect = [predicted(base, c) for c in plant["grid"]]
    assert all(a >= b - 0.1 for a, b in pairwise(mean)), mean  # monotone, within sampling noise
    assert mean[0] - mean[-1] >= 1.0, mean  # a real effect across the grid
    np.testing.assert_allclose(mean, expect, atol=0.4)


def axis_frame(net, tok, src: toy.Source, layer: int, seed: int = 13):
    """(mean, unit axis, D) of `net` at `layer` on fresh fixed text: the role vectors' mean, the
    unit direction to the default's vector, and the default's distance from that mean."""
    examples = src.fixed(10, np.random.default_rng(seed))
    who = np.array([e.role for e in examples])
    x = response_means(net, tok, examples, layer)
    mu = np.stack([x[who == r].mean(0) for r in dict.fromkeys(who) if r != "default"]).mean(0)
    gap = x[who == "default"].mean(0) - mu
    return mu, gap / np.linalg.norm(gap), float(np.linalg.norm(gap))


@pytest.mark.slow
def test_planted_drift_in_the_raw_activations(toy_family, tok, src):
    """On the shipped drift scripts with fresh replies, each reply's mean at the lead layer moves
    along instruct's axis turn by turn as toy.json's drift plant says: in D per turn, within the
    recorded tolerance of the planted slope on the stage it is planted on (sft), and on every
    later stage the drifting families fall faster than the steady ones."""
    truth = toy_family.truth
    plant, layer = truth["drift"], truth["layer"]
    assert set(plant["per_turn"]) == {"therapy", "philosophy", "coding", "writing"}
    talks = src.scripted(np.random.default_rng(29))
    assert {t.turn for t in talks} == set(range(plant["turns"]))
    mu, axis, size = axis_frame(model(toy_family, "instruct"), tok, src, layer)
    for label in ("sft", "instruct"):
        p = (response_means(model(toy_family, label), tok, talks, layer) - mu) @ axis / size
        slope = {}
        for family in plant["per_turn"]:
            rows = [i for i, t in enumerate(talks) if t.family == family]
            slope[family] = np.polyfit([talks[i].turn for i in rows], p[rows], 1)[0]
        if label == "sft":
            for family, planted in plant["per_turn"].items():
                assert abs(slope[family] - planted) <= plant["claims"]["sft_within"], slope
        drifting = [f for f, v in plant["per_turn"].items() if v < 0]
        steady = [f for f, v in plant["per_turn"].items() if v == 0]
        assert max(slope[f] for f in drifting) < min(slope[f] for f in steady), (label, slope)


@pytest.mark.slow
def test_planted_traits_in_the_raw_activations(toy_family, tok, src):
    """On fresh held-out answers, instruct's mean answer under each trait's positive prompts
    minus under its negative ones points along the direction toy.json says was planted, and its
    cosine with instruct's axis is the planted one."""
    plant = toy_family.truth["traits"]
    claims = plant["claims"]
    answers = src.traited(80, np.random.default_rng(31), held_out=True)
    net = model(toy_family, "instruct")
    for layer in plant["layers"]:
        x = response_means(net, tok, answers, layer)
        _, axis, _ = axis_frame(net, tok, src, layer)
        for name, t in plant["traits"].items():
            pos = np.array([a.trait == name and a.side == "pos" for a in answers])
            neg = np.array([a.trait == name and a.side == "neg" for a in answers])
            v = x[pos].mean(0) - x[neg].mean(0)
            v /= np.linalg.norm(v)
            planted = np.array(t["direction"][str(layer)])
            assert v @ planted >= claims["cos_planted_above"], (name, layer, v @ planted)
            assert abs(v @ axis - t["cos_axis"]) <= claims["cos_axis_within"], (name, layer)


def test_toy_judge_scores_traits_and_coherence_0_100(toy_family, src):
    """The judge answers the trait files' rubrics and the traits stage's coherence rubric with
    the planted 0-100 score, as the traits stage parses it, on the right side of its thresholds."""
    from persona_dynamics.toy.data import trait_judge_examples
    from persona_dynamics.traits.spec import parse_100

    net, jtok = model(toy_family, "judge"), load_tokenizer(str(toy_family.judge))
    examples = trait_judge_examples(src, 48, np.random.default_rng(37), held_out=True)
    said = []
    for messages, _ in examples:
        ids = jtok(chat.prompt_text(jtok, messages), add_special_tokens=False, return_tensors="pt")
        out = net.generate(**ids, do_sample=False, max_new_tokens=4)
        said.append(parse_100(jtok.decode(out[0, ids["input_ids"].shape[1] :],
                                          skip_special_tokens=True)))  # fmt: skip
    side = np.mean([s is not None and (s >= 50) == (score >= 50)
                    for s, (_, score) in zip(said, examples, strict=True)])  # fmt: skip
    assert side >= toy_family.truth["traits"]["claims"]["judge_side_above"], said


def test_toy_judge_agrees_with_planted_scores(toy_family, src):
    """Greedy answers to the judge module's prompt, parsed by it, on held-out responses."""
    net, jtok = model(toy_family, "judge"), load_tokenizer(str(toy_family.judge))
    examples = toy.judge_examples(src, 40, np.random.default_rng(99), held_out=True)
    said = []
    for messages, _ in examples:
        ids = jtok(chat.prompt_text(jtok, messages), add_special_tokens=False, return_tensors="pt")
        out = net.generate(**ids, do_sample=False, max_new_tokens=4)
        answer = out[0, ids["input_ids"].shape[1] :]
        said.append(parse_score(jtok.decode(answer, skip_special_tokens=True)))
    agreement = np.mean([s == score for s, (_, score) in zip(said, examples, strict=True)])
    assert agreement >= 0.8, said  # chance is 0.25
    assert toy_family.truth["judge"]["held_out_agreement"] >= 0.8


def test_study_config_points_at_the_family(toy_family, tmp_path):
    cfg = toy.study_config(
        toy_family, "toy-demo", tmp_path, roles__question_count=3, generation={"num_rollouts": 2}
    )
    assert [c.label for c in cfg.checkpoints] == toy_family.truth["stages"]
    assert cfg.reference_label == "instruct" and cfg.output_root == tmp_path
    assert cfg.judge.backend == "local" and Path(cfg.judge.model) == toy_family.judge
    assert cfg.roles.include == toy.DEMO_ROLES and cfg.roles.question_count == 3
    assert cfg.generation.backend == "hf" and cfg.generation.num_rollouts == 2
    assert cfg.generation.model_display_name == toy_family.truth["model_name"]
    with pytest.raises(PersonaDynamicsError, match="nonsense"):
        toy.study_config(toy_family, "x", tmp_path, nonsense=1)


TINY = toy.ToySpec(
    layers=2, hidden=32, heads=2, mlp=64, vocab=600, n_rlvr=1, conversations=200, anchored=200,
    batch=4, base_steps=2, sft_steps=3, stage_steps=2, judge_conversations=16, judge_steps=2,
    judge_batch=2, judge_held_out=8, fixed_per_role=2,
)  # fmt: skip


def digests(root: Path) -> dict[str, str]:
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.suffix == ".safetensors" or p.name == "tokenizer.json"
    ]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_same_weights_and_the_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_DYNAMICS_CACHE", str(tmp_path / "cache"))
    first = toy.cached_build(seed=3, spec=TINY)
    assert first.root.parent == tmp_path / "cache" / "toy"
    assert first.root.name == first.truth["key"]

    def refuse(*args, **kwargs):
        raise AssertionError("a cached family was rebuilt")

    with monkeypatch.context() as m:
        m.setattr(toy.cache, "build", refuse)
        assert toy.cached_build(seed=3, spec=TINY).root == first.root
    again = toy.build(tmp_path / "again", seed=3, spec=TINY)
    assert len(digests(first.root)) == 12 and digests(again.root) == digests(first.root)
    other = toy.build(tmp_path / "other", seed=4, spec=TINY)
    assert (
        digests(other.root)["sft/model.safetensors"] != digests(first.root)["sft/model.safetensors"]
    )
    with pytest.raises(PersonaDynamicsError, match="not a toy build"):
        toy.build(tmp_path / "cache", seed=3, spec=TINY)


def test_cli_build_reuses_the_cache_and_refuses_a_foreign_directory(toy_family, tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "persona_dynamics", "toy", "build", *args]
        return subprocess.run(cmd, capture_output=True, text=True)

    r = cli()
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{toy_family.root}: base sft dpo rlvr-1 rlvr-2 instruct + judge")
    (tmp_path / "notes.txt").write_text("mine")
    r = cli("--out", str(tmp_path), "--seed", "1")
    assert r.returncode == 2 and "not a toy build" in r.stderr
