"""The carrier of a host's crossing links is missing: Open vSwitch stopped
(`--encap vlan`), Click unable to start (`--encap click`): `vnet up` fails
with exit 4 naming the host, rolls back (nothing of the VNet is left on
the hosts or the switch) and records nothing; with the carrier back, the
same request deploys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, new_lab
from tests.e2e.test_encap_direct import CLICK_RUNDIR, click_pids, devices, every_link_pings
from vnetlib.switch import daemons
from vnetlib.switch import lab as switch_lab

FIGURE6 = EXAMPLES / "figure6.xml"


def lab_with(vnet: Vnet, encap: str) -> Lab:
    return new_lab(vnet, "--pips", "1", "--hosts", "2", "--no-players", "--encap", encap)


def failed_up(vnet: Vnet, lab: Lab) -> str:
    done = vnet.run("up", str(FIGURE6), "--substrate", lab.substrate, check=False)
    assert done.returncode == 4, done.stdout + done.stderr
    assert vnet.json("status") == [] or all(v["status"] != "ready" for v in vnet.json("status"))
    return done.stderr


@pytest.mark.parametrize("encap", ["vlan", "click"])
def test_missing_carrier_fails_naming_the_host_and_rolls_back(vnet: Vnet, encap: str) -> None:
    lab = lab_with(vnet, encap)
    blocker: list[Path] = []
    try:
        before = devices(lab.substrate)
        if encap == "vlan":
            directory = Path(vnet.env["VNET_HOME"]) / "labs" / lab.name
            inst = switch_lab.instances(directory)[lab.substrate]
            assert daemons.stop(inst)
        else:
            # the state directory of h2's Click instance cannot be made
            CLICK_RUNDIR.mkdir(parents=True, exist_ok=True)
            path = CLICK_RUNDIR / f"vl-{lab.substrate}-h2"
            path.write_text("not a directory\n")
            blocker.append(path)
        # a stopped vswitchd takes its datapath's tap ports with it
        stopped = devices(lab.substrate)
        err = failed_up(vnet, lab)
        assert "h2" in err and ("Open vSwitch" if encap == "vlan" else "Click") in err, err
        assert devices(lab.substrate) == stopped
        assert not [v for v in vnet.json("status") if v["status"] == "ready"]

        if encap == "vlan":
            vnet.run("lab", "up", "--name", lab.name, "--pips", "1", "--hosts", "2",
                     "--no-players", "--encap", encap, "--mgmt-offset", _offset(vnet, lab))
        else:
            blocker.pop().unlink()
        vnet_id = vnet.json("up", str(FIGURE6), "--substrate", lab.substrate)["vnet"]
        every_link_pings(lab.substrate, vnet_id)
        vnet.run("down", vnet_id)
        assert devices(lab.substrate) == before and not click_pids(lab.substrate)
    finally:
        for path in blocker:
            path.unlink(missing_ok=True)
        vnet.run("lab", "down", "--name", lab.name, check=False)


def _offset(vnet: Vnet, lab: Lab) -> str:
    """The management offset the lab was made with (an up with another is refused)."""
    import json
    saved = json.loads((Path(vnet.env["VNET_HOME"]) / "labs" / lab.name / "lab.json")
                       .read_text())
    return str(saved["mgmt_offset"])
