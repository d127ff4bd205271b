"""The batch plan: a pure function of the token lengths, the token budget and the block size.

Samples are sorted by length (longest first, ties by key) and packed greedily so that a batch's
padded size, batch size x longest sequence, stays under the token budget: with sorted lengths
padding is a few percent, and no fixed batch size wastes memory on short transcripts or runs
out of it on long ones. Consecutive batches form blocks, the unit of a part file, of resume and
of sharding; because the plan depends on nothing else, a resumed or sharded run computes
exactly the batches an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from persona_dynamics.capture.tokens import Sample
from persona_dynamics.config import Shard


@dataclass(frozen=True)
class Plan:
    """Batches (lists of sample indices) grouped into blocks (lists of batch numbers)."""

    batches: list[list[int]]
    blocks: list[list[int]]

    def block_samples(self, block: int) -> list[int]:
        """Sample indices of one block, in compute order."""
        return [i for b in self.blocks[block] for i in self.batches[b]]

    def digest(self, samples: list[Sample]) -> str:
        """Hash of which keys fall in which block, stored in every part to refuse mixing plans."""
        h = hashlib.sha256()
        for block in range(len(self.blocks)):
            h.update(repr(sorted(samples[i].key for i in self.block_samples(block))).encode())
        return h.hexdigest()[:16]


def make_plan(samples: list[Sample], batch_tokens: int, block_samples: int) -> Plan:
    """Sort by length, pack under `batch_tokens` padded tokens, group into blocks of ~N samples."""
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i].ids), samples[i].key))
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        # longest first: the batch's first sample sets its padded length
        if cur and (len(cur) + 1) * len(samples[cur[0]].ids) <= batch_tokens:
            cur.append(i)
        else:
            batches.append([i])
    blocks: list[list[int]] = []
    count = block_samples
    for b, batch in enumerate(batches):
        if count >= block_samples:
            blocks.append([])
            count = 0
        blocks[-1].append(b)
        count += len(batch)
    return Plan(batches, blocks)


def shard_blocks(n_blocks: int, shard: Shard) -> list[int]:
    """The blocks of shard (I, N): every N-th, so shards get long and short samples alike."""
    i, n = shard
    return list(range(i, n_blocks, n))


def padding_fraction(samples: list[Sample], plan: Plan) -> float:
    """Share of processed tokens that are padding."""
    real = sum(len(s.ids) for s in samples)
    total = sum(len(b) * len(samples[b[0]].ids) for b in plan.batches)
    return 1 - real / total if total else 0.0


def collate(samples: list[Sample], idx: list[int], pad_id: int):
    """(ids, start, end) tensors of one batch, right-padded.

    Right padding needs no attention mask: attention is causal, so no real token ever attends to
    the pads after it, and the model keeps its fused causal kernel.
    """
    import torch

    width = max(len(samples[i].ids) for i in idx)
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    for r, i in enumerate(idx):
        ids[r, : len(samples[i].ids)] = samples[i].ids
    start = torch.tensor([samples[i].start for i in idx])
    end = torch.tensor([samples[i].end for i in idx])
    return torch.from_numpy(ids), start, end
