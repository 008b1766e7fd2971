"""End-user attachment: time from plugging in to the first ping answered, one
device at a time and N devices at once.

    .venv/bin/python -m bench.attach [--rounds 5] [--devices 20] [--deadline 300]
                                     [--eap ttls|peap|md5] [--json]

Builds a private lab (one PIP of two hosts, players, `--attach`) in a
temporary VNET_HOME, a VNet whose node e1 is an attachment point, one end user
and one device per concurrent slot, and removes it all at the end.

Plug-in = the device's supplicant starts on its (already linked) port.
Attached = it holds a DHCP address: 802.1X through hostapd, the PIP's
FreeRADIUS proxy, RadSec to the VNO's FreeRADIUS and back, the PIP's
controller connecting the port, dnsmasq on e1. First ping = the first echo
reply from e1's address on the segment (pings every 50 ms). Sequential rounds
detach between rounds and wait 5.5 s (hostapd ignores a device for 5 s after
it left). The concurrent run starts all N attachments at once
(one thread each) and reports the success rate, p50/p95 of plug-in to first
ping, and the CPU seconds the PIP's proxy, the VNO's server, the hostapds and
the access controller used during it. It is bounded: every attachment, its
DHCP and its first ping end by `--deadline` seconds after the start (a
device not answered by then counts as failed), and the devices are not
detached one by one but removed with the lab. With `--devices 200` expect
some minutes: the lab, 200 device namespaces with a hostapd each (set up one
after the other, `setup_s`), the run itself, and the lab's removal. wpa_supplicant sends its first
EAPOL-Start 2 s after it starts (a fixed delay in wpa_supplicant, which waits
for the authenticator to begin): that is the floor of every figure here.
Needs root and scripts/install-aaa.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

NODE_ADDRESS = "198.19.8.1"
# hostapd keeps a station it deauthenticated for 5 s (AP_MAX_INACTIVITY_AFTER_DEAUTH,
# a constant) and ignores its EAPOL-Starts meanwhile: rounds wait that out
REPLUG_PAUSE = 5.5
SPEC = """<?xml version="1.0"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="bench">
  <node id="e1"/>
  <node id="e2"/>
  <link id="l1">
    <endpoint node="e1" interface="eth1"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="e2" interface="eth1"><address>198.19.0.2/30</address></endpoint>
  </link>
  <attach node="e1" pool="198.19.8.0/22" realm="vno"/>
</vnet>
"""


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_ping(netns: str, timeout: float = 10.0) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        done = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1",
                               NODE_ADDRESS], capture_output=True, check=False)
        if done.returncode == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(rounds: int, devices: int, deadline: float = 300.0,
        eap: str = "ttls") -> dict[str, object]:
    from vnetlib.aaa.users import UserStore
    from vnetlib.cli.users import add_user
    from vnetlib.lab import attach, testbed
    from vnetlib.lab.players import service_provider
    from vnetlib.players.sp import ServiceProvider
    from vnetlib.spec import parse_vnet

    name = "b" + secrets.token_hex(1) + secrets.choice("abcdefghij")
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                          check=True).stdout
    offset = next(k for k in range(4, 97, 4) if f" 198.18.{129 + k}." not in used)
    spec = testbed.LabSpec(name=name, pips=1, hosts=2, mgmt_offset=offset, attach=True)
    directory = testbed.lab_dir(name)
    result: dict[str, object] = {"load_before": Path("/proc/loadavg").read_text().split()[:3],
                                 "eap": eap}
    try:
        testbed.up(spec)
        subs = spec.substrates()
        sp: ServiceProvider = service_provider(name)
        vnet_id = sp.request_vnet(parse_vnet(SPEC.encode())).id
        add_user(sp, "u0@vno", "pw-0", vnet_id, "e1")  # through the VNO's API
        store = UserStore(directory / "aaa" / "vno", "vno")  # the others at once
        first = store.get("u0@vno")
        assert first is not None
        store.add_many([(replace(first, identity=f"u{i}@vno"), f"pw-{i}")
                        for i in range(1, devices)])
        setup = time.monotonic()
        for i in range(devices):
            attach.add_device(directory, subs, f"d{i}")
        result["setup_s"] = round(time.monotonic() - setup, 1)

        failures: list[str] = []
        authorized: list[float] = []
        end = time.monotonic() + 60.0  # per round for the sequential rounds

        def one(i: int) -> tuple[bool, float, float | None]:
            left = end - time.monotonic()
            if left < 3:
                failures.append(f"d{i}: not started before the deadline")
                return False, 0.0, None
            got = attach.attach(directory, f"d{i}", f"u{i}@vno", f"pw-{i}",
                                timeout=min(60.0, left - 2), eap=eap)
            if got.outcome != "connected":
                failures.append(f"d{i}: {got.outcome} {got.detail[-120:]}")
                return False, got.seconds, None
            if got.authorized_after is not None:
                authorized.append(got.authorized_after)
            ping = first_ping(attach.device(directory, f"d{i}").netns,
                              timeout=max(1.0, min(10.0, end - time.monotonic())))
            if ping is None:
                failures.append(f"d{i}: no ping answered")
            return ping is not None, got.seconds, None if ping is None else got.seconds + ping

        sequential: list[float] = []
        for _ in range(rounds):
            end = time.monotonic() + 60.0
            ok, _, total = one(0)
            if ok and total is not None:
                sequential.append(total)
            attach.detach(directory, "d0")
            time.sleep(REPLUG_PAUSE)
        result["sequential"] = {"rounds": rounds, "ok": len(sequential),
                                "median_s": round(statistics.median(sequential), 3)
                                if sequential else None,
                                "min_s": round(min(sequential), 3) if sequential else None,
                                "authorized_s": [round(a, 3) for a in authorized],
                                "first_ping_s": [round(t, 3) for t in sequential]}
        authorized.clear()
        pids = _daemon_pids(directory)
        before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        wall = time.monotonic()
        end = wall + deadline
        with ThreadPoolExecutor(max_workers=devices) as pool:
            outcomes = list(pool.map(one, range(devices)))
        wall = time.monotonic() - wall
        after = {k: sum(cpu_seconds(p) for p in v) for k, v in _daemon_pids(directory).items()}
        totals = [t for ok, _, t in outcomes if ok and t is not None]
        result["concurrent"] = {
            "devices": devices, "ok": len(totals), "success_rate": len(totals) / devices,
            "p50_s": round(pct(totals, 0.5), 3) if totals else None,
            "p95_s": round(pct(totals, 0.95), 3) if totals else None,
            "wall_s": round(wall, 3),
            "authorized_p50_s": round(pct(authorized, 0.5), 3) if authorized else None,
            "cpu_s": {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in before},
            "deadline_s": deadline,
            "failures": failures[:10],
        }
    finally:
        testbed.down(name)
    result["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    return result


def _daemon_pids(directory: Path) -> dict[str, list[int]]:
    def pids(pattern: str) -> list[int]:
        out = []
        for pidfile in directory.glob(pattern):
            try:
                out.append(int(pidfile.read_text()))
            except (OSError, ValueError):
                continue
        return out

    return {"pip_proxy": pids("aaa/pip1/run/proxy.pid"),
            "vno_server": pids("aaa/vno/run/server.pid"),
            "hostapd_all": pids("aaa/pip1/run/hostapd-*.pid"),
            "controller": pids("aaa/pip1/run/controller.pid")}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attach")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--devices", type=int, default=20,
                        help="devices attaching at once (1-250; each runs a hostapd and a "
                             "wpa_supplicant)")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds by which every concurrent attachment has ended")
    parser.add_argument("--eap", choices=("ttls", "peap", "md5"), default="ttls",
                        help="the devices' EAP method (md5: the lab's VNO must allow it, "
                             "VNET_EAP_METHODS)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.devices <= 250:
        parser.error("--devices is 1 to 250 (the pool is a /22)")
    if not 10 <= args.deadline <= 1800:
        parser.error("--deadline is 10 to 1800 seconds")
    with tempfile.TemporaryDirectory(prefix="vnet-bench-attach-") as home:
        os.environ["VNET_HOME"] = home
        result = run(args.rounds, args.devices, args.deadline, args.eap)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        seq = result["sequential"]
        con = result["concurrent"]
        print(f"plug-in to first ping, one device: median {seq['median_s']} s, "  # type: ignore[index]
              f"min {seq['min_s']} s over {seq['ok']}/{seq['rounds']} rounds")  # type: ignore[index]
        print(json.dumps(con, indent=2))
        print(f"load before {result['load_before']}, after {result['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
