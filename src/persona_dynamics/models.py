"""Load a model and tokenizer at a revision (hub id or local path), optionally with an adapter.

The hub path is the real one users take on a networked GPU box; with no network, the error says
so and tells how to point at a local directory instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from persona_dynamics.config import Checkpoint
from persona_dynamics.errors import PersonaDynamicsError, require
from persona_dynamics.roles import read_json

log = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def pick_device(device: str = "auto") -> str:
    """'auto' is CUDA when present, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    """'auto' is bfloat16 on CUDA and float32 on CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, DTYPES[dtype])


def _hub_error(model: str, revision: str, exc: Exception) -> PersonaDynamicsError:
    text = f"{type(exc).__name__}: {exc}"
    offline = any(
        s in text
        for s in ("offline", "Connection", "resolve", "Max retries", "couldn't connect", "Network")
    )
    if offline:
        return PersonaDynamicsError(
            f"cannot load '{model}' at revision '{revision}': the model hub is unreachable from "
            "here. Download it elsewhere and set the checkpoint's `model` to the local directory."
        )
    if "revision" in text.lower() or "RevisionNotFound" in text:
        return PersonaDynamicsError(
            f"'{model}' has no revision '{revision}' ({text.splitlines()[0]})"
        )
    return PersonaDynamicsError(
        f"cannot load '{model}' at revision '{revision}' (a hub id, as no local directory of "
        f"that name exists): {text.splitlines()[0]}"
    )


# A hub id: `name` or `owner/name`. Anything else (a path with more parts, `./x`, `/x`, `~/x`) is a
# local directory, whether it exists or not, so a missing one is reported as missing.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
# What a local model directory must hold for each use: (what, any of these names or patterns).
NEEDS = {
    "config": ("config.json", ("config.json",)),
    "tokenizer": (
        "tokenizer files (tokenizer.json or tokenizer_config.json)",
        ("tokenizer.json", "tokenizer_config.json"),
    ),
    "weights": (
        "weights (*.safetensors or pytorch_model*.bin)",
        ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json"),
    ),
}


def is_local(model: str) -> bool:
    """Whether a checkpoint's `model` names a local directory rather than a hub id."""
    return Path(model).exists() or not HUB_ID.fullmatch(model)


def check_local(model: str, *needs: str) -> None:
    """Refuse a local model directory that does not exist or lacks what loading it needs."""
    path = Path(model)
    if not path.exists():
        raise PersonaDynamicsError(f"{model}: local model directory not found")
    if not path.is_dir():
        raise PersonaDynamicsError(f"{model}: not a directory (a model is a directory)")
    lacks = [n for n, (_, pats) in NEEDS.items() if not any(any(path.glob(p)) for p in pats)]
    if len(lacks) == len(NEEDS):  # empty, or some other directory: say all it should hold
        what = ", no ".join(NEEDS[n][0] for n in lacks)
        raise PersonaDynamicsError(f"{model}: not a model directory: no {what}")
    missing = [NEEDS[n][0] for n in needs if n in lacks]
    if missing:
        raise PersonaDynamicsError(
            f"{model}: incomplete model directory: no {', no '.join(missing)}"
        )


def resolve_commit(model: str, revision: str) -> str | None:
    """The commit a revision points at (hub, else the local hub cache), or None for a directory.

    Resolve once per checkpoint and load at the result, so the commit recorded is the one loaded.
    Offline (`HF_HUB_OFFLINE=1`, or no network) the cache's `refs/<revision>` names the commit the
    weights will load from. A failure is logged here at debug level: loading next reports an
    unreachable hub or a missing revision as its one clear error, and `unresolved` warns when
    loading worked without a commit.
    """
    if is_local(model):
        return None
    from huggingface_hub import HfApi, snapshot_download

    try:
        return HfApi().model_info(model, revision=revision).sha
    except Exception as exc:  # noqa: BLE001 - the cache is asked next, loading reports the real error
        log.debug("could not resolve the commit of %s@%s on the hub: %s", model, revision, exc)
    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True)).name
    except Exception as exc:  # noqa: BLE001 - recorded as unknown, loading reports the real error
        log.debug("%s@%s is not in the local hub cache either: %s", model, revision, exc)
        return None


def unresolved(model: str, revision: str, commit: str | None) -> None:
    """Warn, once weights loaded, that a hub checkpoint's commit is unknown (recorded as null)."""
    if commit is None and not is_local(model):
        log.warning(
            "could not resolve the commit of %s@%s (hub unreachable?): recorded as unknown",
            model,
            revision,
        )


def load_tokenizer(model: str, revision: str = "main"):
    """A fast tokenizer (offsets are needed for the response span)."""
    from transformers import AutoTokenizer

    kwargs = {} if is_local(model) else {"revision": revision}
    if is_local(model):
        check_local(model, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(model, **kwargs)
    except OSError as exc:
        raise _hub_error(model, revision, exc) from None
    if not getattr(tok, "is_fast", False):
        raise PersonaDynamicsError(f"'{model}': a fast tokenizer is required (for token offsets)")
    return tok


def load_config(model: str, revision: str = "main"):
    """A model's config alone (shapes), without its weights."""
    from transformers import AutoConfig

    kwargs = {} if is_local(model) else {"revision": revision}
    if is_local(model):
        check_local(model, "config")
    try:
        return AutoConfig.from_pretrained(model, **kwargs)
    except OSError as exc:
        raise _hub_error(model, revision, exc) from None


def adapter_config(adapter: str) -> dict:
    """A PEFT adapter directory's adapter_config.json, or an error naming the directory."""
    path = Path(adapter, "adapter_config.json")
    if not path.exists():
        raise PersonaDynamicsError(f"{adapter}: not a PEFT adapter (no adapter_config.json)")
    return read_json(path, obj=True)


@dataclass
class Loaded:
    """A model ready for inference, with what identifies it."""

    model: object
    label: str
    model_id: str
    revision: str
    commit: str | None
    adapter: str | None


def load_model(
    ckpt: Checkpoint,
    device: str = "auto",
    dtype: str = "auto",
    merge: bool = False,
    commit: str | None = None,
) -> Loaded:
    """Load a checkpoint's weights (and its PEFT adapter, merged or not) in eval mode.

    The weights load at `commit` when the caller resolved one (so what it records is what it
    loaded); otherwise the revision is resolved here, once, and loaded at that commit.
    """
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    kwargs = {"dtype": pick_dtype(dtype, device)}
    commit = commit or resolve_commit(ckpt.model, ckpt.revision)
    if not is_local(ckpt.model):
        kwargs["revision"] = commit or ckpt.revision
    else:
        check_local(ckpt.model, "config", "weights")
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt.model, **kwargs)
    except OSError as exc:
        raise _hub_error(ckpt.model, ckpt.revision, exc) from None
    if ckpt.adapter:
        peft = require("train", "peft")
        adapter_config(ckpt.adapter)
        model = peft.PeftModel.from_pretrained(model, ckpt.adapter)
        if merge:
            model = model.merge_and_unload()
    model.to(device).eval()
    unresolved(ckpt.model, ckpt.revision, commit)
    return Loaded(model, ckpt.label, ckpt.model, ckpt.revision, commit, ckpt.adapter)


def list_revisions(model: str) -> list[tuple[str, str, str]]:
    """(kind, name, commit) for every branch and tag of a hub repo, for looping over RLVR steps.

    With the hub unreachable, the refs held in the local hub cache are listed (kind "cached").
    """
    from huggingface_hub import HfApi

    try:
        refs = HfApi().list_repo_refs(model)
    except Exception as exc:  # noqa: BLE001 - the cache is asked next, else one clear message
        cached = cached_revisions(model)
        if not cached:
            raise _hub_error(model, "*", exc) from None
        log.warning("the hub is unreachable: listing the revisions of %s in the local cache", model)
        return cached
    out = [("branch", b.name, b.target_commit) for b in refs.branches]
    out += [("tag", t.name, t.target_commit) for t in refs.tags]
    return sorted(out, key=lambda r: (r[0], r[1]))


def cached_revisions(model: str) -> list[tuple[str, str, str]]:
    """("cached", ref, commit) for each ref of `model` in the local hub cache; [] if none."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir().repos
    except CacheNotFound:
        return []
    refs = {
        ref: rev.commit_hash
        for repo in repos
        if repo.repo_id == model and repo.repo_type == "model"
        for rev in repo.revisions
        for ref in rev.refs
    }
    return sorted(("cached", ref, commit) for ref, commit in refs.items())
