"""A local Hugging Face hub cache holding model directories as branches of one repo id, offline."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def fake_commit(name: str, files: dict[str, bytes]) -> str:
    """A 40-hex commit id that depends on the branch name and every file's bytes."""
    h = hashlib.sha1(name.encode())
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel])
    return h.hexdigest()


def lay_out(cache: Path, repo_id: str, branches: dict[str, Path]) -> dict[str, str]:
    """Write `cache/models--org--name` as the hub client lays it out; return {branch: commit}.

    Each branch is a snapshot of one local model directory: files stored once as blobs (by
    content hash), linked from `snapshots/<commit>/`, and `refs/<branch>` naming the commit.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commits = {}
    for branch, src in branches.items():
        files = {
            p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()
        }
        commit = fake_commit(branch, files)
        snap = repo / "snapshots" / commit
        for rel, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                blob.write_bytes(data)
            link = snap / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("../" * (rel.count("/") + 2), "blobs", blob.name))
        ref = repo / "refs" / branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
        commits[branch] = commit
    return commits


def remove(cache: Path, repo_id: str) -> None:
    """Drop one repo from the cache."""
    shutil.rmtree(cache / ("models--" + repo_id.replace("/", "--")), ignore_errors=True)
