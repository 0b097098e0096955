"""Expiry on a MongoDB whose TTL pass comes often: every expiry reaches the user's streams before MongoDB
deletes the notification."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from services.embedded import die_with_parent, free_port, terminate, wait_for_port
from services.expiry import SWEEP_INTERVAL_SECONDS
from tests.support import iso_in

# MongoDB's TTL pass comes every 60 s; here every 50 ms, so that it comes between each expiry and the sweep.
TTL_PASS_SECONDS = 0.05
# The server `secantusd-py` starts, with that TTL pass: the launcher has no option for it, and reads
# `ttl_sweep_seconds` in its configuration file without using it (SecantusDB 0.7).
EAGER_TTL_SERVER = """
import sys
from secantus import SecantusDBServer

port, storage_path, ttl_pass_seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
server = SecantusDBServer("127.0.0.1", port, storage_path, enable_test_commands=False,
                          ttl_sweep_seconds=ttl_pass_seconds)
server.start()
server.wait()
"""


@pytest.fixture
def wakeup_hints() -> bool:
    """An expiry is announced as a change; how streams are woken does not change it."""
    return True


@pytest.fixture
def eager_ttl_mongo(tmp_path) -> Iterator[str]:
    """The URL of a SecantusDB whose TTL pass comes every TTL_PASS_SECONDS."""
    port = free_port()
    command = [sys.executable, "-c", EAGER_TTL_SERVER, str(port), str(tmp_path / "mongodb"), str(TTL_PASS_SECONDS)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        wait_for_port(process, port, "SecantusDB")
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"
    finally:
        terminate(process)


@pytest.fixture
def store_urls(store_urls, eager_ttl_mongo):
    """The eager-TTL MongoDB, and the session's Redis."""
    return eager_ttl_mongo, store_urls[1]


@pytest.mark.gen_test(timeout=60)
async def test_every_expiry_is_announced_though_mongodbs_ttl_pass_comes_before_the_sweep(api, open_stream):
    """Deleted by the TTL index as soon as it expired, a notification the TTL pass took before the sweep (every
    2 s) came was never announced: the user's streams kept showing it and their badge kept counting it."""
    stream = await open_stream("alice")
    await stream.next_event()
    # Expiries spread over more than two sweeps, each past its TTL pass long before the next sweep.
    expiring = [await api.create("alice", f"expiring {i}", expires_at=iso_in(1.0 + 0.4 * i)) for i in range(6)]
    created = [await stream.next_change() for _ in expiring]
    assert [change["ids"] for change in created] == [[notification["id"]] for notification in expiring]

    expired: list[dict] = []
    while sum(len(change["ids"]) for change in expired) < len(expiring):
        expired.append(await stream.next_change(timeout=3 * SWEEP_INTERVAL_SECONDS + 5))
    assert {change["change"] for change in expired} == {"expired"}
    assert sorted(id for change in expired for id in change["ids"]) == sorted(n["id"] for n in expiring)
    assert (expired[-1]["unread_count"], expired[-1]["unseen_count"]) == (0, 0)
