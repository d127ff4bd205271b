"""`run_generate`: sample every missing transcript of a study from its generating checkpoint.

Holds the run lock (`lock.py`) of its directory and shard, reads the roles and questions, skips
keys already written (resume, shards), checks and records the manifest, then streams the
backend's batches into append-only role files under a progress bar. Ctrl-C says how many
transcripts were kept.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm import tqdm

from persona_dynamics.config import WHOLE, Shard, Study
from persona_dynamics.errors import Interrupted, PersonaDynamicsError
from persona_dynamics.generation.base import Generator, resolve_backend
from persona_dynamics.generation.requests import (
    Result,
    Sampling,
    build_requests,
    display_name,
)
from persona_dynamics.jsonl import Appender
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.roles import DEFAULT, Question, digest, questions_digest, roles_digest
from persona_dynamics.transcripts import (
    check_manifest,
    part_path,
    selection,
    transcripts_dir,
    write_manifest,
    written_keys,
)

log = logging.getLogger(__name__)


def make_generator(cfg: Study, backend: str) -> Generator:
    """The sampling backend of a study's generating checkpoint."""
    gen, ckpt = cfg.generation, cfg.generating_checkpoint()
    edit = None
    if ckpt.intervention:
        if backend != "hf":
            raise PersonaDynamicsError(
                f"checkpoint '{ckpt.label}': backend '{backend}' cannot apply the intervention "
                f"'{ckpt.intervention}' (forward hooks need the model in this process); "
                "use generation.backend = 'hf'"
            )
        from persona_dynamics.models import load_config
        from persona_dynamics.steering.spec import intervention

        n_layers = load_config(ckpt.model, ckpt.revision).num_hidden_layers
        edit = intervention(cfg, ckpt.intervention, n_layers)
    if backend == "hf":
        from persona_dynamics.generation.hf import HFGenerator

        return HFGenerator(ckpt, gen.device, gen.dtype, gen.batch_tokens, edit)
    if backend == "vllm":
        from persona_dynamics.generation.vllm import VLLMGenerator

        return VLLMGenerator(ckpt, gen, cfg.source)
    from persona_dynamics.generation.served import ServedGenerator

    return ServedGenerator(ckpt, gen)


def to_row(result: Result) -> dict:
    """The transcript row of one result, as docs/contracts.md's contract (the role is the file)."""
    _, spi, qi = result.request.id
    return {
        "system_prompt_idx": spi,
        "question_idx": qi,
        "rollout_idx": result.rollout,
        "messages": list(result.request.messages),
        "response": result.response,
        "finish_reason": result.finish_reason,
        "n_tokens": result.n_tokens,
    }


def shared_questions(cfg: Study, questions: dict[str, list[Question]]) -> list[Question]:
    """The shared questions file's selected questions (per-role ones live in the role digests)."""
    for role, qs in questions.items():
        if role == DEFAULT or not cfg.roles.per_role_questions:
            return qs
    return []


def run_generate(cfg: Study) -> Path:
    """Generate the study's transcripts (generation.shard's part); return their directory."""
    out, shard = transcripts_dir(cfg), cfg.generation.shard or WHOLE
    with hold(lock_file(out, "generate", shard)):
        return _generate(cfg, out, shard)


def _generate(cfg: Study, out: Path, shard: Shard) -> Path:
    """Generate under the run lock: check the manifest, then stream batches into role files."""
    gen, ckpt = cfg.generation, cfg.generating_checkpoint()
    roles, questions = selection(cfg)
    name = display_name(cfg)
    done = {r.name: written_keys(out, r.name) for r in roles}
    n_done = sum(map(len, done.values()))
    if n_done and not gen.resume:
        raise PersonaDynamicsError(
            f"{out}: {n_done} transcripts are already there; resume (the default) to add the "
            "missing ones, or choose another run name"
        )
    requests = build_requests(roles, questions, name, gen.num_rollouts, gen.seed, done, shard)
    backend = resolve_backend(gen.backend)
    manifest = {
        "model": ckpt.model,
        "revision": ckpt.revision,
        "label": ckpt.label,
        "backend": backend,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "max_tokens": gen.max_tokens,
        "seed": gen.seed,
        "num_rollouts": gen.num_rollouts,
        "model_display_name": name,
        "roles": [r.name for r in roles],
        "roles_digest": roles_digest(roles),
        "role_digests": {r.name: roles_digest([r]) for r in roles},
        "question_digests": {
            str(q.id): digest(q.question) for q in shared_questions(cfg, questions)
        },
        "per_role_questions": cfg.roles.per_role_questions,
        "questions_file": str(cfg.roles.question_file),
        "question_count": cfg.roles.question_count,
        "questions_digest": questions_digest(next(iter(questions.values()))),
        "preset": cfg.preset,
        "preset_departures": cfg.departures(),
    }
    check_manifest(out, manifest)  # sampling parameters: refuse before loading any model
    total = sum(len(r.todo) for r in requests)
    if not total:
        log.info("%s: all %d transcripts of this shard are already written", out, n_done)
        return out
    generator = make_generator(cfg, backend)
    manifest.update(generator.info())
    check_manifest(out, manifest)  # and the chat template, now that it is known
    write_manifest(out, manifest)
    log.info(
        "generating %d responses (%d already written) into %s with %s", total, n_done, out, backend
    )
    writers: dict[str, Appender] = {}
    sampling = Sampling(gen.temperature, gen.top_p, gen.max_tokens, gen.seed)
    n = tokens = truncated = 0
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="prompt", desc="generate") as bar:
            for batch in generator.generate(requests, sampling):
                by_role: dict[str, list[dict]] = {}
                for res in batch:
                    by_role.setdefault(res.request.id[0], []).append(to_row(res))
                    tokens += res.n_tokens
                    truncated += res.finish_reason == "length"
                for role, rows in by_role.items():
                    if role not in writers:
                        writers[role] = Appender(part_path(out, role, shard))
                    writers[role].write(rows)
                n += len(batch)
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    except KeyboardInterrupt:
        kept = sum(len(written_keys(out, r.name)) for r in roles)  # what is on disk, durable
        raise Interrupted(f"{kept} of {n_done + total} transcripts kept in {out}") from None
    finally:
        for w in writers.values():
            w.close()
        generator.close()
    secs = time.perf_counter() - start
    log.info(
        "generated %d responses, %d tokens in %.1f s (%.0f tok/s); %d truncated at max_tokens=%d",
        n,
        tokens,
        secs,
        tokens / max(secs, 1e-9),
        truncated,
        gen.max_tokens,
    )
    return out
