"""The JavaScript client's own tests (tests/js/, node's test runner) in `make test`.

They run against the run's shared servers: the embedded default (SQLite, one process), and the
MariaDB + Redis cluster with the client under test on one process and the other users on the
other, so recovery crosses the relay. `node --test tests/js/` alone starts a server of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import Any

import pytest

from tests.support import API_KEY, JWT_SECRET, ROOT

NODE = shutil.which("node")


@pytest.fixture(params=["sqlite", "mysql"])
def shared_cluster(request: pytest.FixtureRequest) -> Any:
    """The shared SQLite server, then the shared two-process MariaDB + Redis cluster."""
    return request.getfixturevalue("shared_sqlite" if request.param == "sqlite" else "shared_mysql_cluster")


@pytest.mark.skipif(NODE is None, reason="node is not installed (make test installs node_modules with npm)")
def test_js_client_node_tests(shared_cluster: Any) -> None:
    cluster = shared_cluster
    env = {**os.environ, "BACKSTAGE_TEST_URLS": ",".join(s.url for s in cluster.servers),
           "BACKSTAGE_TEST_JWT_SECRET": JWT_SECRET, "BACKSTAGE_TEST_API_KEY": API_KEY}
    assert NODE is not None
    # Its own process group: a hung run is killed with the per-file processes node --test starts
    # (within pytest's 120 s per-test timeout, which would leave them running).
    proc = subprocess.Popen([NODE, "--test", "--test-reporter=spec", "tests/js/"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"node --test did not finish in 90 s:\n{out}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"node --test failed ({proc.returncode}):\n{out}"
