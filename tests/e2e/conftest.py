"""End-to-end fixtures: clusters of real ``tn-coordinator`` / ``tn-worker`` processes.

``cluster`` (per test) and ``module_cluster`` (per module) kill every process they started
at teardown, also when the test failed, and a failing test's report gets the tail of each
process's log. ``coordinator`` runs with the fast clocks of ``harness.FAST_ENV``;
``start_worker`` starts workers of it. See harness.py for the process classes, rest.py for
the REST client and waiting.py for ``wait_until``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import FAST_ENV, Cluster, Coordinator, Worker

CLUSTERS = pytest.StashKey[list[Cluster]]()  # on a test or module node: its clusters


def _register(node: pytest.Item | pytest.Collector, cluster: Cluster) -> None:
    clusters: list[Cluster] = node.stash.setdefault(CLUSTERS, [])
    clusters.append(cluster)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster")
    _register(request.node, c)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory,
                   request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    _register(request.node, c)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def coordinator(cluster: Cluster) -> Coordinator:
    """A coordinator with the fast clocks of FAST_ENV."""
    return cluster.coordinator(FAST_ENV)


@pytest.fixture
def start_worker(cluster: Cluster, coordinator: Coordinator) -> Callable[..., Worker]:
    """``start_worker(id, slots=2, env=None, extra_args=None, wait=True)``: a worker of
    ``coordinator``; ``extra_args`` go to ``tn-worker connect`` (e.g. ``["--prefetch", "0"]``)."""
    def start(worker_id: str, slots: int = 2, env: dict[str, str] | None = None,
              extra_args: list[str] | None = None, wait: bool = True) -> Worker:
        return cluster.worker(coordinator, worker_id, slots, env, extra_args, wait=wait)
    return start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for node in item.listchain():
            for c in node.stash.get(CLUSTERS, []):
                for proc in c.procs:
                    report.sections.append((f"{proc.name} log ({proc.log_path})",
                                            proc.log_tail()))
    return report
