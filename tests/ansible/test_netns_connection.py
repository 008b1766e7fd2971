"""Unit tests of the vnet.infra.netns connection's command wrapping (no root)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleConnectionFailure
from ansible_collections.vnet.infra.plugins.connection.netns import Connection


def _connection(name: str, method: str = "nsenter") -> Connection:
    conn = Connection.__new__(Connection)
    conn._options = {"netns_name": name, "netns_method": method}
    return conn


def test_wrap_nsenter() -> None:
    conn = _connection("vl-lab-h1")
    assert conn.wrap_command("echo 'a b'") == (
        "nsenter --net=/run/netns/vl-lab-h1 -- /bin/sh -c 'echo '\"'\"'a b'\"'\"''"
    )


def test_wrap_ip_netns_exec() -> None:
    conn = _connection("vl-lab-h1", "ip")
    assert conn.wrap_command("true") == "ip netns exec vl-lab-h1 /bin/sh -c true"


@pytest.mark.parametrize("name", ["../etc", "a/b", ".."])
def test_bad_names(name: str) -> None:
    with pytest.raises(AnsibleConnectionFailure, match="invalid network namespace name"):
        _connection(name).wrap_command("true")
