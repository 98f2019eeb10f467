"""Result verification, chosen per task: ``none``, ``spot`` or ``quorum``.

- none: the first result is accepted.
- spot: a chunk picked by the task's secret salt (``spot_per_mille`` in 1000; a quarter as
  often when the first result's account is trusted) also runs on a second account; the two
  must agree by digest, and a third decides if they do not.
- quorum: replicas run on distinct accounts until ``quorum_m`` agree by digest (at most
  ``2 * quorum_k`` replicas, then the chunk fails: its results never agree).

Replicas of one chunk run one after another, never two at once: a chunk has at most one
lease, which keeps leases, caps and fencing exactly as without verification; throughput
comes from running many chunks at once, latency per chunk grows with the replicas.
Digests are computed here over the output bytes, never taken from the worker.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from coordinator.core.state import Task, Vote

MODES = ("none", "spot", "quorum")


def digest(output: bytes) -> str:
    return hashlib.sha256(output).hexdigest()


def spot_checked(task: Task, chunk: int, trusted: bool, divisor: int) -> bool:
    rate = task.spot_per_mille // divisor if trusted else task.spot_per_mille
    roll = int.from_bytes(hashlib.sha256(f"{task.salt}:{chunk}".encode()).digest()[:4], "big")
    return roll % 1000 < rate


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # accept, more, fail
    digest: str = ""
    reason: str = ""

    def agrees(self, vote: Vote) -> bool:
        return self.outcome == "accept" and vote.digest == self.digest


def verdict(task: Task, votes: list[Vote], needs_second_opinion: bool) -> Verdict:
    top, count = Counter(v.digest for v in votes).most_common(1)[0]
    if task.verification == "none" or (task.verification == "spot" and len(votes) == 1
                                       and not needs_second_opinion):
        return Verdict("accept", votes[0].digest)
    want, most = (2, 3) if task.verification == "spot" else (task.quorum_m, 2 * task.quorum_k)
    if count >= want:
        return Verdict("accept", top)
    if len(votes) >= most:
        return Verdict("fail", reason=(
            f"results of {len(votes)} workers never agreed ({want} needed); "
            "the code may be nondeterministic"))
    return Verdict("more")
