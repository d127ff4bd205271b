"""Capture throughput and memory against a bare forward pass; prints one JSON line per case.

    python benchmarks/capture.py                                 # toy: 4 layers, hidden 256, CPU
    python benchmarks/capture.py --shape olmo2-1b --device cuda  # random weights, the real shape

Over the same tokens and the same batches (sorted by length under a token budget), it times:
a bare decoder forward (no hooks, all blocks, no LM head); the `hooks` backend capturing every
layer and only the middle one; HF's `output_hidden_states=True` reduced afterwards (for
reference); the middle layer by truncating the block list instead of stopping by exception; and
the one-transcript-at-a-time oracle (`reference_capture`: whole model, LM head included, hooks
on every block), on a subset, compared per token; plus the hooks backend fed one transcript at a
time, to separate what batching buys from what skipping work buys. Every shape keeps OLMo-2's
vocabulary, so the LM head costs what it costs on the real model. Timings are medians of
interleaved repeats. On the CPU it also runs `run_capture` end to end in child processes at 1x
and 4x the transcripts and compares their peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import Olmo2Config, Olmo2ForCausalLM

from persona_dynamics.capture.backends import HooksBackend, reference_capture
from persona_dynamics.capture.plan import collate, make_plan, padding_fraction
from persona_dynamics.capture.tokens import Sample
from persona_dynamics.hooks import Reducer, on_blocks

SHAPES = {  # layers, hidden, heads, MLP, vocabulary
    "toy": (4, 256, 4, 1024, 100352),
    "olmo2-1b": (16, 2048, 16, 8192, 100352),
    "olmo2-7b": (32, 4096, 32, 11008, 100352),
}


def build_model(shape: str, device: str, dtype: torch.dtype):
    """A randomly initialised Olmo2ForCausalLM of the named shape (no hub needed)."""
    layers, hidden, heads, mlp, vocab = SHAPES[shape]
    cfg = Olmo2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Olmo2ForCausalLM(cfg)
    return model.to(dtype).eval()


def make_samples(n: int, vocab: int, seed: int = 0) -> list[Sample]:
    """n transcripts of 50-300 tokens: a 20-40 token prompt, the rest the response, an EOS."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length, prompt = int(rng.integers(50, 301)), int(rng.integers(20, 41))
        ids = rng.integers(5, vocab, length).astype(np.int32)
        out.append(Sample(("bench", 0, i, 0), ids, prompt, length - 1))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, batches, device: str) -> float:
    """Seconds to run fn over every batch."""
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            fn(*b)
    sync(device)
    return time.perf_counter() - t


def bare(model, device):
    dec = model.get_decoder()
    return lambda ids, s, e: dec(input_ids=ids.to(device), use_cache=False)


def hidden_states(model, device, layers):
    """HF's way: every hidden state returned, then reduced (entry i + 1 is block i's output)."""
    dec = model.get_decoder()

    def run(ids, s, e):
        hs = dec(input_ids=ids.to(device), use_cache=False, output_hidden_states=True).hidden_states
        red = Reducer(s, e, ids.shape[1], len(layers), "mean", device)
        for slot, layer in enumerate(layers):
            red.take(slot, hs[layer + 1])
        return red.result()

    return run


def truncated(model, device, layer):
    """The middle layer by running a truncated block list (the alternative to stopping early)."""
    dec = model.get_decoder()
    full = dec.layers

    def run(ids, s, e):
        dec.layers = full[: layer + 1]
        try:
            red = Reducer(s, e, ids.shape[1], 1, "mean", device)
            with on_blocks(dec, {layer: partial(red.take, 0)}):
                dec(input_ids=ids.to(device), use_cache=False)
            return red.result()
        finally:
            dec.layers = full

    return run


def rss_child(n: int, work: Path) -> int:
    """Peak RSS (kB) of run_capture over n transcripts (fresh process; layer 0: the data path
    from transcripts to parts to the consolidated file is what could grow, not the forward)."""
    from persona_dynamics.capture import run_capture
    from persona_dynamics.config import parse

    tr = work / f"tr-{n}"
    tr.mkdir(exist_ok=True)
    rng = np.random.default_rng(n)
    words = (work / "words.txt").read_text().split()
    with open(tr / "bench.jsonl", "w") as f:
        for i in range(n):
            text = " ".join(rng.choice(words, int(rng.integers(30, 270))))
            msgs = [{"role": "user", "content": "Tell me about the sea and the ships."}]
            row = {"system_prompt_idx": 0, "question_idx": i, "rollout_idx": 0, "messages": msgs,
                   "response": text, "finish_reason": "stop", "n_tokens": 0}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    cfg = parse({
        "run_name": "bench", "checkpoints": [{"label": f"x{n}", "model": str(work / "model")}],
        "capture": {"transcript_dir": str(tr), "output_dir": str(work / "act"), "layers": [0],
                    "device": "cpu"},
    })  # fmt: skip
    run_capture(cfg)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_growth(n: int) -> dict:
    """Peak RSS of run_capture at 4x the transcripts over 1x, minus 1 (child processes)."""
    from persona_dynamics.toy import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        words = ["".join(rng.choice(list("abcdefghij"), 4)) for _ in range(300)]
        (work / "words.txt").write_text(" ".join(words))
        tok = build_tokenizer([" ".join(words)] * 20, vocab_size=1024)
        tok.save_pretrained(work / "model")
        build_model("toy", "cpu", torch.float32).save_pretrained(work / "model")
        peak = {}
        for k in (1, 4):
            cmd = [sys.executable, __file__, "--rss-child", str(k * n), "--work", str(work)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            peak[k] = int(out.split()[-1])
    growth = peak[4] / peak[1] - 1
    return {"rss_1x_mb": peak[1] / 1024, "rss_4x_mb": peak[4] / 1024, "rss_growth": growth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="toy")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=2000, help="transcripts")
    ap.add_argument("--per-sample-n", type=int, default=200)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default 8192 CPU, 65536 GPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    ap.add_argument("--extras", action="store_true", help="CPU too: truncation, hidden_states")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        print(rss_child(args.rss_child, args.work))
        return
    cuda = args.device.startswith("cuda")
    budget = args.batch_tokens or (65536 if cuda else 8192)
    model = build_model(args.shape, args.device, torch.bfloat16 if cuda else torch.float32)
    n_layers = model.config.num_hidden_layers
    samples = make_samples(args.n, model.config.vocab_size)
    plan = make_plan(samples, budget, block_samples=10**9)
    batches = [collate(samples, b, 0) for b in plan.batches]
    tokens = sum(len(s.ids) for s in samples)
    middle = n_layers // 2
    cases = {
        "bare": bare(model, args.device),
        "all_layers": HooksBackend(model, list(range(n_layers)), "mean"),
        "middle": HooksBackend(model, [middle], "mean"),
    }
    if cuda or args.extras:
        cases["middle_truncated"] = truncated(model, args.device, middle)
        cases["hidden_states"] = hidden_states(model, args.device, list(range(n_layers)))
    timed(cases["bare"], batches[:2], args.device)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):  # interleaved, so drifting load hits every case alike
        for name, fn in cases.items():
            times[name].append(timed(fn, batches, args.device))
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    sub = samples[: args.per_sample_n]
    sub_tokens = sum(len(s.ids) for s in sub)
    one = [collate(sub, [i], 0) for i in range(len(sub))]
    all_layers = list(range(n_layers))
    oracle, single = [], []
    for _ in range(args.repeats):
        sync(args.device)
        t = time.perf_counter()
        with torch.inference_mode():
            reference_capture(model, sub, all_layers, "mean")
        sync(args.device)
        oracle.append(time.perf_counter() - t)
        single.append(timed(cases["all_layers"], one, args.device))
    result = {
        "case": f"{args.shape}-{args.device}",
        "transcripts": args.n,
        "tokens": tokens,
        "batch_tokens": budget,
        "batches": len(plan.batches),
        "threads": torch.get_num_threads(),
        "tokens_per_s_bare": round(tps["bare"]),
        "ratio_vs_bare_forward": tps["all_layers"] / tps["bare"],
        "ratio_middle_layer_vs_bare": tps["middle"] / tps["bare"],
        "ratio_vs_per_sample": tps["all_layers"] * statistics.median(oracle) / sub_tokens,
        "ratio_vs_hooks_one_at_a_time": tps["all_layers"] * statistics.median(single) / sub_tokens,
        "padding_fraction": padding_fraction(samples, plan),
    }
    if "hidden_states" in cases:
        result["ratio_middle_stop_vs_truncated"] = tps["middle"] / tps["middle_truncated"]
        result["ratio_hidden_states_vs_bare"] = tps["hidden_states"] / tps["bare"]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        timed(cases["all_layers"], batches, args.device)
        hooks_mem = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        timed(cases["hidden_states"], batches, args.device)
        result["peak_mem_hidden_states_vs_hooks"] = torch.cuda.max_memory_allocated() / hooks_mem
    if not args.no_rss and not cuda:
        result |= rss_growth(args.n)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
