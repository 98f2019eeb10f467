"""Security tests run against real coordinator processes: the e2e fixtures, re-exported
(and the e2e report hook, so a failing test's report carries each process's log)."""

from tests.e2e.conftest import (  # noqa: F401
    cluster,
    coordinator,
    module_cluster,
    pytest_runtest_makereport,
    start_worker,
)
