"""`run_capture(cfg)`: every selected checkpoint over the reference's transcripts, one store each.

The transcripts are tokenized once and planned once; then per label the blocks of the plan that
this shard owns and that have no part file yet are computed (finished blocks are written as parts
on a background thread), and once every block exists the parts are consolidated (`parts.py`).
Shards (`I/N`) compute every N-th block into the same parts directory; whichever process finds
all blocks present consolidates, and `merge` does it by hand.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from persona_dynamics import __version__
from persona_dynamics.capture.backends import make_backend
from persona_dynamics.capture.parts import (
    consolidate,
    differences,
    existing_parts,
    part_path,
    parts_dir,
)
from persona_dynamics.capture.plan import Plan, collate, make_plan, shard_blocks
from persona_dynamics.capture.tokens import Sample, tokenize, tokens_digest
from persona_dynamics.chat import SPAN_RULE
from persona_dynamics.config import WHOLE, Shard, Study
from persona_dynamics.errors import Interrupted, PersonaDynamicsError
from persona_dynamics.layers import resolve
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.models import load_config, load_model, load_tokenizer, resolve_commit
from persona_dynamics.steering.apply import Steering, steer
from persona_dynamics.steering.spec import intervention
from persona_dynamics.store import ActivationStore, activations_path, write_store
from persona_dynamics.transcripts import (
    read_selection,
    read_transcripts,
    selection,
    transcripts_digest,
    transcripts_dir,
)

log = logging.getLogger(__name__)


@dataclass
class Job:
    """What every label of one run shares: the tokenized transcripts, their plan and digests,
    and the commit each label's revision was resolved to (once: weights load at that commit)."""

    samples: list[Sample]
    plan: Plan
    plan_digest: str
    layers: list[int]
    shape: tuple[int, int]  # (n_layers, hidden) of the model line
    transcripts_digest: str
    tokens_digest: str
    pad_id: int
    tokenizer: object
    commits: dict[str, str | None]


def resolve_commits(cfg: Study, labels: list[str]) -> dict[str, str | None]:
    """Each label's revision resolved to a commit, once per label (None: local or unknown)."""
    return {
        label: resolve_commit(cfg.checkpoint(label).model, cfg.checkpoint(label).revision)
        for label in labels
    }


def model_shape(cfg: Study, label: str, commit: str | None) -> tuple[int, int]:
    """(n_layers, hidden_size) of a checkpoint at its resolved commit, from its config alone."""
    ckpt = cfg.checkpoint(label)
    conf = load_config(ckpt.model, commit or ckpt.revision)
    return int(conf.num_hidden_layers), int(conf.hidden_size)


def check_shapes(shapes: dict[str, tuple[int, int]], reference: str) -> None:
    """All labels of a run share layer count and hidden size; refuse naming the one that differs."""
    ref = shapes[reference]
    for label, shape in shapes.items():
        if shape != ref:
            raise PersonaDynamicsError(
                f"checkpoint '{label}' has {shape[0]} layers x hidden {shape[1]}, but the "
                f"reference '{reference}' has {ref[0]} x {ref[1]}; one run captures one model line"
            )


def none_subset(samples: list[Sample], n: int) -> list[Sample]:
    """A deterministic spread of n samples (by key hash) for per-token capture."""
    rank = sorted(samples, key=lambda s: hashlib.sha256(repr(s.key).encode()).digest())
    return sorted(rank[:n], key=lambda s: s.key)


def store_bytes(job: Job, dtype: str) -> int:
    """One label's store size: rows (response tokens for 'none') x layers x hidden x bytes."""
    rows = len(job.samples)
    if job.plan is None:
        rows = sum(s.n_response for s in job.samples)
    return rows * len(job.layers) * job.shape[1] * np.dtype(dtype).itemsize


def check_disk(out_dir: Path, job: Job, dtype: str, n_labels: int) -> None:
    """Say the size up front; refuse a run that would not fit (a label's parts + final file)."""
    size = store_bytes(job, dtype)
    need = size * (n_labels + 1) if job.plan is not None else size * n_labels
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    log.info(
        "store: %d samples x %d layers x %d hidden x %d bytes = %s per label; %d label(s) need %s "
        "(with parts), %s free in %s",
        len(job.samples), len(job.layers), job.shape[1], np.dtype(dtype).itemsize, _gb(size),
        n_labels, _gb(need), _gb(free), probe,
    )  # fmt: skip
    if need > free:
        raise PersonaDynamicsError(
            f"{out_dir}: capture needs {_gb(need)} ({_gb(size)} per label) but only {_gb(free)} "
            "is free; free space, capture fewer layers, or store float16"
        )


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def prepare(cfg: Study) -> Job:
    """Read and tokenize the transcripts once (reference tokenizer), check shapes, plan batches."""
    c = cfg.capture
    labels = c.checkpoints or [k.label for k in cfg.checkpoints]
    ref = cfg.checkpoint(cfg.reference_label)
    commits = resolve_commits(cfg, list(dict.fromkeys([ref.label, *labels])))
    shapes = {label: model_shape(cfg, label, commit) for label, commit in commits.items()}
    check_shapes(shapes, ref.label)
    layers = resolve(c.layers, shapes[ref.label][0], "capture.layers")
    if c.transcript_dir:  # a directory named by hand is read whole
        tdir, rows = c.transcript_dir, read_transcripts(c.transcript_dir)
    else:  # the run's transcripts: exactly the study's selection
        tdir = transcripts_dir(cfg)
        rows = read_selection(cfg, tdir, selection(cfg)[1])
    if not rows:
        raise PersonaDynamicsError(f"{tdir}: no transcripts to capture")
    tdigest = transcripts_digest(rows)
    tok = load_tokenizer(ref.model, commits[ref.label] or ref.revision)
    samples = tokenize(rows, tok)
    del rows
    empty = sum(s.n_response == 0 for s in samples)
    if empty:
        log.warning(
            "%d transcript(s) have an empty response: their rows are NaN, n_tokens 0", empty
        )
    kdigest = tokens_digest(samples)  # of every transcript, also when 'none' keeps a subset
    plan = None
    if c.aggregation == "none":
        samples = none_subset(samples, c.none_max_samples)
    else:
        plan = make_plan(samples, c.batch_tokens, c.block_samples)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return Job(
        samples, plan, plan.digest(samples) if plan else "", layers, shapes[ref.label], tdigest,
        kdigest, pad, tok, commits,
    )  # fmt: skip


def label_attrs(cfg: Study, label: str, job: Job) -> dict:
    """The identity attributes of one label's store."""
    ckpt, c = cfg.checkpoint(label), cfg.capture
    return {
        "model": ckpt.model,
        "revision": ckpt.revision,
        "commit": job.commits[label],
        "adapter": ckpt.adapter,
        "intervention": ckpt.intervention,
        "intervention_spec": ckpt.intervention
        and json.dumps(intervention(cfg, ckpt.intervention, job.shape[0]).describe()),
        "layers": job.layers,
        "aggregation": c.aggregation,
        "backend": c.backend,
        "dtype": c.dtype,
        "transcripts_digest": job.transcripts_digest,
        "tokens_digest": job.tokens_digest,
        "span_rule": SPAN_RULE,
        "hidden_size": job.shape[1],
        "n_layers": job.shape[0],
        "version": __version__,
    }


def check_run(cfg: Study, job: Job) -> None:
    """Stores already written for this run's other labels must share digests and shapes."""
    want = {
        "transcripts_digest": job.transcripts_digest,
        "tokens_digest": job.tokens_digest,
        "hidden_size": job.shape[1],
        "n_layers": job.shape[0],
    }
    for ckpt in cfg.checkpoints:
        path = activations_path(cfg, ckpt.label)
        if path.exists():
            with ActivationStore.open(path) as st:
                diff = differences(st.attrs, want, keys=want)
            if diff:
                raise PersonaDynamicsError(
                    f"{path}: label '{ckpt.label}' was captured from other transcripts or another "
                    f"model line ({'; '.join(diff)}); a run's labels must share them"
                )


def run_capture(cfg: Study) -> Path:
    """Capture the selected checkpoints (capture.checkpoints, default all); return the store dir."""
    c = cfg.capture
    labels = c.checkpoints or [k.label for k in cfg.checkpoints]
    shard = c.shard or WHOLE
    out_dir = activations_path(cfg, labels[0]).parent
    with hold(lock_file(out_dir, "capture", shard)):
        return _capture(cfg, labels, shard, out_dir)


def _capture(cfg: Study, labels: list[str], shard: Shard, out_dir: Path) -> Path:
    """Capture under the run lock of this output directory and shard."""
    c = cfg.capture
    job = prepare(cfg)
    check_run(cfg, job)
    todo = [x for x in labels if not activations_path(cfg, x).exists()]
    check_disk(out_dir, job, c.dtype, len(todo))
    for label in labels:
        capture_label(cfg, label, job, shard)
    return out_dir


def capture_label(cfg: Study, label: str, job: Job, shard: Shard = WHOLE) -> Path | None:
    """One label: skip if done, else run this shard's missing blocks; consolidate once all exist."""
    attrs = label_attrs(cfg, label, job)
    final = activations_path(cfg, label)
    if final.exists():
        with ActivationStore.open(final) as st:
            diff = differences(st.attrs, attrs)
        if diff:
            raise PersonaDynamicsError(
                f"{final}: already holds a different capture of '{label}' ({'; '.join(diff)}); "
                "delete it to capture again"
            )
        log.info("%s: already captured", final)
        shutil.rmtree(parts_dir(final), ignore_errors=True)  # left if killed right after the rename
        return final
    if job.plan is None:
        return capture_tokens(cfg, label, job, attrs, final)
    parts = parts_dir(final)
    done = existing_parts(parts, attrs, job.plan_digest)
    todo = [b for b in shard_blocks(len(job.plan.blocks), shard) if b not in done]
    if todo:
        log.info("%s: %d of %d blocks to compute", label, len(todo), len(job.plan.blocks))
        try:
            with loaded_backend(cfg, label, job) as backend:
                compute_blocks(backend, job, todo, parts, attrs, label)
        except KeyboardInterrupt:
            kept = len(list(parts.glob("block-*.h5")))
            raise Interrupted(
                f"{label}: {kept} of {len(job.plan.blocks)} blocks kept in {parts}"
            ) from None
    missing = set(range(len(job.plan.blocks))) - set(done) - set(todo)
    if missing:
        log.info(
            "%s: %d block(s) left to other shards; the last one consolidates", label, len(missing)
        )
        return None
    return consolidate(parts, final)


@contextmanager
def loaded_backend(cfg: Study, label: str, job: Job):
    """Load a checkpoint (+ adapter) at its resolved commit, wrap it in the configured backend;
    free it afterwards."""
    import torch

    c, ckpt = cfg.capture, cfg.checkpoint(label)
    loaded = load_model(ckpt, c.device, c.model_dtype, c.backend == "lens", job.commits[label])
    try:
        backend = make_backend(c.backend, loaded.model, job.layers, c.aggregation, job.tokenizer)
        if ckpt.intervention is None:
            yield backend
        else:
            edit = intervention(cfg, ckpt.intervention, job.shape[0])
            with steer(loaded.model, edit) as steering:
                yield partial(steered, backend, steering)
    finally:
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def steered(backend, steering: Steering, ids, start, end):
    """Run a batch under an intervention whose prompt and response are the samples' spans."""
    steering.spans(start.tolist(), end.tolist())
    return backend(ids, start, end)


def compute_blocks(
    backend, job: Job, blocks: list[int], parts: Path, attrs: dict, label: str
) -> None:
    """Run blocks batch by batch; each finished block is written as a part on a writer thread."""
    import torch

    plan, samples = job.plan, job.samples
    part_attrs = {
        **attrs,
        "complete": False,
        "n_blocks": len(plan.blocks),
        "plan_digest": job.plan_digest,
    }
    total = sum(len(plan.block_samples(b)) for b in blocks)
    bar = tqdm(total=total, desc=f"capture {label}", unit="transcript", mininterval=2)
    with bar, torch.inference_mode(), ThreadPoolExecutor(1) as writer:
        pending = []
        for block in blocks:
            outs = []
            for b in plan.blocks[block]:
                outs.append(backend(*collate(samples, plan.batches[b], job.pad_id)).numpy())
                bar.update(len(plan.batches[b]))
            idx = plan.block_samples(block)
            pending.append(
                writer.submit(
                    write_store,
                    part_path(parts, block),
                    np.concatenate(outs),
                    [samples[i].key for i in idx],
                    job.layers,
                    {**part_attrs, "block": block},
                    np.array([samples[i].n_response for i in idx]),
                    chunked=False,
                )
            )
            while len(pending) > 1:  # at most one block waits on the disk
                pending.pop(0).result()
        for p in pending:
            p.result()


def capture_tokens(cfg: Study, label: str, job: Job, attrs: dict, final: Path) -> Path:
    """Aggregation 'none': per-token activations of a small subset, held in memory, written once."""
    import torch

    acts: list[np.ndarray] = []
    with loaded_backend(cfg, label, job) as backend, torch.inference_mode():
        for s in tqdm(job.samples, desc=f"capture {label} (tokens)", unit="transcript"):
            ids, start, end = collate([s], [0], job.pad_id)
            acts.append(backend(ids, start, end)[0].numpy())
    n = np.array([s.n_response for s in job.samples])
    return write_store(final, acts, [s.key for s in job.samples], job.layers, attrs, n)


def merge(cfg: Study) -> list[Path]:
    """Consolidate the parts of every selected label (after sharded runs); refuse gaps, overlaps."""
    labels = cfg.capture.checkpoints or [k.label for k in cfg.checkpoints]
    out = []
    for label in labels:
        final = activations_path(cfg, label)
        parts = parts_dir(final)
        if not parts.is_dir():
            if final.exists():
                log.info("%s: already consolidated", final)
                out.append(final)
                continue
            raise PersonaDynamicsError(f"{parts}: no parts for '{label}'; run `capture` first")
        path = consolidate(parts, final)
        if path is None:
            raise PersonaDynamicsError(f"{parts}: another process is consolidating '{label}'")
        out.append(path)
    return out
