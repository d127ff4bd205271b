"""Generation: request building, batching, the hf backend, the store, manifest and CLI flags."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from persona_dynamics.config import Checkpoint, Shard, parse
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.generation import run_generate
from persona_dynamics.generation.hf import HFGenerator, plan_batches, seeded_sampler, uniforms
from persona_dynamics.generation.requests import (
    Request,
    Sampling,
    build_requests,
    derive_seed,
    display_name,
)
from persona_dynamics.roles import Question, Role, load_default, load_roles
from persona_dynamics.transcripts import (
    check_manifest,
    read_transcripts,
    selection,
    transcripts_digest,
    transcripts_dir,
)

from helpers.cli import cli
from helpers.paths import QUESTIONS, ROLES_DIR
from helpers.study import make_study

QS = [Question(0, "What is courage?"), Question(7, "Name a good breakfast.")]


def study(tmp_path, model: str = "allenai/OLMo-2-1124-7B-Instruct", **gen) -> object:
    """A small study over pirate + cat (+ default) with two questions."""
    return make_study(
        tmp_path / "out",
        checkpoints=[{"label": "tiny", "model": str(model)}],
        roles={
            "dir": str(ROLES_DIR),
            "questions": str(QUESTIONS),
            "include": ["pirate", "cat"],
            "question_count": 2,
        },
        generation={"backend": "hf", "max_tokens": 5, "batch_tokens": 800, **gen},
    )


# --- pure request building -----------------------------------------------------------------------


def test_requests_messages_are_filled_prompts_and_questions():
    pirate = load_roles(ROLES_DIR, ["pirate"])[0]
    default = load_default(ROLES_DIR)
    reqs = build_requests([pirate, default], {"pirate": QS, "default": QS}, "OLMo-T", 2, seed=0)
    assert len(reqs) == (len(pirate.instructions) + len(default.instructions)) * len(QS)
    by_id = {r.id: r for r in reqs}
    r = by_id[("pirate", 3, 7)]
    assert r.rollouts == (0, 1)
    assert r.messages == (
        {"role": "system", "content": pirate.instructions[3]},
        {"role": "user", "content": "Name a good breakfast."},
    )
    empty = default.instructions.index("")
    assert by_id[("default", empty, 0)].messages == (
        {"role": "user", "content": "What is courage?"},
    )
    named = [i for i, t in enumerate(default.instructions) if "{model_name}" in t]
    assert named, "the default prompts use {model_name}"
    for i in named:
        system = by_id[("default", i, 0)].messages[0]["content"]
        assert "OLMo-T" in system and "{model_name}" not in system


def test_requests_skip_done_keys_and_seeds_follow_keys():
    role = Role("r", ("be r",), "rubric")
    done = {"r": {(0, 0, 0), (0, 0, 2), (0, 7, 0), (0, 7, 1), (0, 7, 2)}}
    reqs = build_requests([role], {"r": QS}, "m", 3, seed=5, done=done)
    assert [(r.id, r.rollouts, r.todo) for r in reqs] == [
        (("r", 0, 0), (0, 1, 2), (1,)),
        (("r", 0, 7), (0, 1, 2), ()),  # kept, so a backend can plan the uninterrupted batches
    ]
    again = build_requests([role], {"r": QS}, "m", 3, seed=5)
    assert again[0].seed == reqs[0].seed == derive_seed(5, "r", 0, 0)
    assert build_requests([role], {"r": QS}, "m", 3, seed=6)[0].seed != reqs[0].seed
    seeds = {again[0].rollout_seed(k) for k in range(3)}
    assert len(seeds) == 3 and all(0 <= s < 2**63 for s in seeds)


def test_shards_cover_the_work_exactly_once():
    roles = [Role(f"r{i}", tuple(f"be {i}.{j}" for j in range(5)), "x") for i in range(4)]
    qs = [Question(i, f"q{i}") for i in range(12)]
    full = build_requests(roles, dict.fromkeys([r.name for r in roles], qs), "m", 2, 0)
    parts = [
        build_requests(
            roles, dict.fromkeys([r.name for r in roles], qs), "m", 2, 0, shard=Shard(i, 3)
        )
        for i in range(3)
    ]
    ids = [r.id for p in parts for r in p]
    assert Counter(ids) == Counter(r.id for r in full)  # every prompt once, none twice
    assert all(len(p) > len(full) / 6 for p in parts)  # and the split is not degenerate


@pytest.mark.parametrize("bad", ["3/3", "1", "a/b", "-1/2", "0/0"])
@pytest.mark.parametrize("section", ["generation", "capture"])
def test_bad_shard_names_the_key(tmp_path, section, bad):
    data = {"run_name": "t", "checkpoints": [{"label": "x", "model": "m"}], section: {"shard": bad}}
    with pytest.raises(PersonaDynamicsError, match=rf"{section}\.shard: .*shard '{bad}'"):
        parse(data)


def test_shard_is_one_type_for_every_stage():
    data = {"run_name": "t", "checkpoints": [{"label": "x", "model": "m"}]}
    cfg = parse(data | {"generation": {"shard": "1/4"}, "capture": {"shard": "3/4"}})
    assert cfg.generation.shard == Shard(1, 4) and cfg.capture.shard == Shard(3, 4)
    assert parse(data).generation.shard is None


def test_display_name_and_work(tmp_path):
    cfg = study(tmp_path)
    assert display_name(cfg) == "OLMo-2-1124-7B-Instruct"
    cfg.generation.model_display_name = "OLMo"
    assert display_name(cfg) == "OLMo"
    roles, qs = selection(cfg)
    assert [r.name for r in roles] == ["pirate", "cat", "default"]
    assert [q.id for q in qs["cat"]] == [0, 1]
    cfg.roles.include = ["default"]
    assert [r.name for r in selection(cfg)[0]] == ["default"]
    cfg.roles.include = ["pirate", "nosuchrole"]
    with pytest.raises(PersonaDynamicsError, match="unknown role.*nosuchrole"):
        selection(cfg)


def test_transcripts_dir_layout(tmp_path, tiny_model_dir):
    cfg = study(tmp_path)
    cfg.checkpoints[0].revision = "stage1-step5"
    assert transcripts_dir(cfg) == (
        tmp_path / "out/transcripts/t/allenai_OLMo-2-1124-7B-Instruct/stage1-step5"
    )
    local = study(tmp_path, tiny_model_dir)
    assert transcripts_dir(local) == tmp_path / "out/transcripts/t" / tiny_model_dir.name / "tiny"


def splitmix64(seed: int, step: int) -> float:
    """The reference algorithm in plain Python integers."""
    m = (1 << 64) - 1
    z = (seed + (step + 1) * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def test_uniforms_are_splitmix64_per_row():
    import torch

    seeds = [0, 1, 12345, 2**62 + 7, 2**63 - 1]
    for step in (0, 1, 77, 10**6):
        got = uniforms(torch.tensor(seeds), step).tolist()
        assert got == [splitmix64(s, step) for s in seeds]
    many = uniforms(torch.arange(50_000) * 7919, 3)
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.var().item() - 1 / 12) < 0.005


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 0.9), (0.5, 1.0), (0.0, 0.9)])
def test_seeded_sampler_draws_the_nucleus_distribution(temperature, top_p):
    import torch

    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20_000
    scores = p.log().repeat(n, 1)
    out = seeded_sampler(list(range(n)), temperature, top_p, width=3)(torch.zeros(n, 3), scores)
    assert (torch.isfinite(out).sum(1) == 1).all()
    freq = torch.bincount(out.argmax(1), minlength=4).double() / n
    if temperature == 0:
        want = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    else:
        q = p ** (1 / temperature)
        q = q / q.sum()
        q = q * ((q.cumsum(0) - q) < top_p)  # the smallest set of tokens reaching top_p
        want = (q / q.sum()).double()
    assert torch.allclose(freq, want, atol=0.015), (freq, want)


def test_plan_batches_budget_and_order():
    lengths = [5, 40, 12, 40, 7, 33, 2, 19]
    batches = plan_batches(lengths, max_new=10, budget=120)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b) + 10
        assert len(b) == 1 or len(b) * width <= 120
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    assert plan_batches([500], 10, 100) == [[0]]  # one oversized row still gets its batch


def test_manifest_refuses_other_sampling(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"temperature": 0.7, "top_p": 0.9}))
    check_manifest(tmp_path, {"temperature": 0.7, "top_p": 0.9, "roles": ["x"]})
    with pytest.raises(PersonaDynamicsError, match=r"temperature: recorded 0\.7, now 0\.8"):
        check_manifest(tmp_path, {"temperature": 0.8, "top_p": 0.9})


# --- the hf backend on the tiny model ------------------------------------------------------------


def test_hf_prompts_are_exactly_the_templated_messages(tiny_model_dir):
    gen = HFGenerator(Checkpoint(label="tiny", model=str(tiny_model_dir)), batch_tokens=200)
    sent = []
    original = gen.model.generate

    def spy(**kw):
        for ids, mask in zip(kw["input_ids"].tolist(), kw["attention_mask"].tolist(), strict=True):
            sent.append(gen.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]))
        return original(**kw)

    gen.model.generate = spy
    reqs = [
        Request(
            ("a", 0, 0),
            ({"role": "system", "content": "Be a cat."}, {"role": "user", "content": "Hi there?"}),
            (0, 1),
            1,
        ),
        Request(("a", 1, 0), ({"role": "user", "content": "Only a question."},), (0,), 2),
    ]
    out = [r for batch in gen.generate(reqs, Sampling(max_tokens=3)) for r in batch]
    assert sorted(r.key for r in out) == [("a", 0, 0, 0), ("a", 0, 0, 1), ("a", 1, 0, 0)]
    assert sorted(sent) == sorted(
        [
            "<|endoftext|><|system|>\nBe a cat.\n<|user|>\nHi there?\n<|assistant|>\n",
            "<|endoftext|><|system|>\nBe a cat.\n<|user|>\nHi there?\n<|assistant|>\n",
            "<|endoftext|><|user|>\nOnly a question.\n<|assistant|>\n",
        ]
    )
    assert all(r.finish_reason in ("stop", "length") and r.n_tokens <= 3 for r in out)


@pytest.mark.slow
def test_hf_text_depends_on_seed_not_on_batching(tiny_model_dir):
    ckpt = Checkpoint(label="tiny", model=str(tiny_model_dir))
    role = load_roles(ROLES_DIR, ["pirate"])[0]
    reqs = build_requests([role], {"pirate": QS}, "m", 2, seed=0)
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=12)

    def texts(batch_tokens, requests=reqs, s=sampling):
        gen = HFGenerator(ckpt, dtype="float32", batch_tokens=batch_tokens)
        return {r.key: r.response for b in gen.generate(requests, s) for r in b}

    big, single = texts(4000), texts(1)  # all rows in one batch vs one row per batch
    assert len(big) == 20 and texts(4000) == big  # same batches: the same text, bit for bit
    # other batches change logits in the last bits only; a draw rarely lands on a boundary
    assert sum(single[k] == big[k] for k in big) >= 18
    reseeded = [Request(r.id, r.messages, r.rollouts, r.seed + 1) for r in reqs]
    other = texts(4000, reseeded)
    assert sum(other[k] != big[k] for k in big) >= 15  # seeds matter: sampling is not greedy
    greedy = texts(4000, s=Sampling(temperature=0.0, max_tokens=12))
    assert greedy[("pirate", 0, 0, 0)] == greedy[("pirate", 0, 0, 1)]  # no noise at T=0


@pytest.mark.slow
def test_run_generate_end_to_end(tmp_path, tiny_model_dir):
    cfg = study(tmp_path, tiny_model_dir, num_rollouts=2)
    out = run_generate(cfg)
    rows = read_transcripts(out)
    pirate, cat = load_roles(ROLES_DIR, ["pirate", "cat"])
    default = load_default(ROLES_DIR)
    expect = {
        (r.name, s, q, k)
        for r in (pirate, cat, default)
        for s in range(len(r.instructions))
        for q in (0, 1)
        for k in (0, 1)
    }
    assert {
        (r["role"], r["system_prompt_idx"], r["question_idx"], r["rollout_idx"]) for r in rows
    } == expect
    assert len(rows) == len(expect)
    assert sorted(p.name for p in out.iterdir()) == [
        "cat.jsonl",
        "default.jsonl",
        "manifest.json",
        "pirate.jsonl",
    ]
    row = next(r for r in rows if r["role"] == "cat" and r["system_prompt_idx"] == 2)
    assert row["messages"][0]["content"] == cat.instructions[2]
    assert set(row) == {
        "role",
        "system_prompt_idx",
        "question_idx",
        "rollout_idx",
        "messages",
        "response",
        "finish_reason",
        "n_tokens",
    }
    man = json.loads((out / "manifest.json").read_text())
    for k, v in {
        "backend": "hf",
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 5,
        "seed": 0,
        "model": str(tiny_model_dir),
        "num_rollouts": 2,
    }.items():
        assert man[k] == v, k
    assert len(man["chat_template_hash"]) == 16 and man["roles"] == ["cat", "default", "pirate"]
    assert {"roles_digest", "questions_digest", "package_version", "time", "commit"} <= set(man)

    digest = transcripts_digest(rows)
    assert run_generate(cfg) == out and transcripts_digest(read_transcripts(out)) == digest
    cfg.generation.temperature = 0.5
    with pytest.raises(PersonaDynamicsError, match="temperature: recorded 0.7, now 0.5"):
        run_generate(cfg)
    cfg.generation.temperature = 0.7
    cfg.generation.resume = False
    with pytest.raises(PersonaDynamicsError, match="already there"):
        run_generate(cfg)


def test_shards_write_parts_that_merge(tmp_path, tiny_model_dir):
    cfg = study(tmp_path, tiny_model_dir, max_tokens=2)
    cfg.roles.include = ["cat"]
    cfg.roles.include_default = False
    for i in range(2):
        cfg.generation.shard = f"{i}/2"
        run_generate(cfg)
    out = transcripts_dir(cfg)
    assert sorted(p.name for p in out.glob("*.jsonl")) == [
        "cat.shard-0-of-2.jsonl",
        "cat.shard-1-of-2.jsonl",
    ]
    sharded = read_transcripts(out)
    assert len(sharded) == 5 * 2 and len({tuple(r.values())[:4] for r in sharded}) == 10
    whole = study(tmp_path / "b", tiny_model_dir, max_tokens=2)
    whole.roles.include, whole.roles.include_default = ["cat"], False
    prompts = [
        {k: v for k, v in r.items() if k not in ("response", "finish_reason", "n_tokens")}
        for r in read_transcripts(run_generate(whole))
    ]
    # the same keys and prompts (texts may differ: shards batch differently)
    assert prompts == [
        {k: v for k, v in r.items() if k not in ("response", "finish_reason", "n_tokens")}
        for r in sharded
    ]


def test_read_transcripts_errors(tmp_path):
    with pytest.raises(PersonaDynamicsError, match="no transcripts here"):
        read_transcripts(tmp_path / "nope")
    (tmp_path / "cat.jsonl").write_text("")
    with pytest.raises(PersonaDynamicsError, match="no transcripts for role.*pirate"):
        read_transcripts(tmp_path, ["pirate"])
    row = {"system_prompt_idx": 0, "question_idx": 0, "rollout_idx": 0, "response": "Mew.",
           "messages": [{"role": "user", "content": "Hi?"}], "finish_reason": "stop",
           "n_tokens": 2}  # fmt: skip
    line = json.dumps(row) + "\n"
    (tmp_path / "cat.jsonl").write_text(line)
    (tmp_path / "cat.shard-0-of-2.jsonl").write_text(line)
    with pytest.raises(PersonaDynamicsError, match=r"key \('cat', 0, 0, 0\) also written"):
        read_transcripts(tmp_path)


def test_model_without_chat_template(tmp_path, tiny_model_dir):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file = bare / "tokenizer_config.json"
    data = json.loads(cfg_file.read_text())
    data.pop("chat_template", None)
    cfg_file.write_text(json.dumps(data))
    with pytest.raises(PersonaDynamicsError, match="no chat template"):
        HFGenerator(Checkpoint(label="bare", model=str(bare)))


# --- the command line ----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_flags_without_config_and_flags_over_config(tmp_path, tiny_model_dir):
    r = cli(
        "generate",
        "--model-name",
        str(tiny_model_dir),
        "--run-name",
        "flags",
        "--roles",
        "cat",
        "--question-count",
        "1",
        "--num-rollouts",
        "2",
        "--temperature",
        "0.8",
        "--max-tokens",
        "3",
        "--backend",
        "hf",
        "--output-root",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "transcripts/flags" / tiny_model_dir.name / tiny_model_dir.name
    assert r.stdout.strip().endswith(str(out))
    man = json.loads((out / "manifest.json").read_text())
    assert (man["temperature"], man["max_tokens"], man["num_rollouts"]) == (0.8, 3, 2)
    assert len(read_transcripts(out, ["cat"])) == 5 * 1 * 2

    conf = tmp_path / "c.toml"
    conf.write_text(
        f'run_name = "conf"\noutput_root = "{tmp_path}"\n'
        f'[[checkpoints]]\nlabel = "x"\nmodel = "/nonexistent/model"\n'
        f'[roles]\ndir = "{ROLES_DIR}"\nquestions = "{QUESTIONS}"\ninclude = ["pirate"]\n'
        "question_count = 1\ninclude_default = false\n"
        '[generation]\nbackend = "hf"\nmax_tokens = 9\ntemperature = 0.3\n'
    )
    r = cli(
        "generate",
        str(conf),
        "--model-name",
        str(tiny_model_dir),
        "--roles",
        "cat",
        "--max-tokens",
        "2",
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "transcripts/conf" / tiny_model_dir.name / "x"
    man = json.loads((out / "manifest.json").read_text())
    assert (man["temperature"], man["max_tokens"], man["roles"]) == (0.3, 2, ["cat"])

    r = cli("generate", str(conf), "--max-tokens", "0")
    assert r.returncode == 2 and "generation.max_tokens" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("generate", str(conf), "--model-name", str(tiny_model_dir), "--roles", "nosuch")
    assert r.returncode == 2 and "unknown role(s): nosuch" in r.stderr
    r = cli(
        "generate",
        str(conf),
        "--model-name",
        "allenai/OLMo-2-0425-1B-Instruct",
        "--checkpoint",
        "no-such-rev",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    for part in ("allenai/OLMo-2-0425-1B-Instruct", "no-such-rev", "unreachable", "local"):
        assert part in r.stderr, part
