"""`vnet lab up|status|down`."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from vnetlib.cli.output import emit_json
from vnetlib.cli.progress import Live
from vnetlib.cli.users import add_password_options, password_of
from vnetlib.lab import attach, testbed


def add_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="the local lab: PIP substrates and players on this machine")
    verbs = lab.add_subparsers(dest="lab_verb", required=True)
    up = verbs.add_parser("up", help="create the lab (idempotent)")
    up.add_argument("--name", default="lab", help="lab name, 1-4 letters/digits (default: lab)")
    up.add_argument("--pips", type=int, default=2, help="number of PIPs (default: 2)")
    up.add_argument("--hosts", type=int, default=3, help="substrate hosts per PIP (default: 3)")
    up.add_argument("--cpu", type=float, default=4.0, help="CPU capacity of each host (cores)")
    up.add_argument("--memory", type=int, default=4096, help="memory of each host, MiB")
    up.add_argument(
        "--mgmt-offset",
        type=int,
        default=0,
        help="PIP i's management network is 198.18.(128+offset+i).0/24",
    )
    up.add_argument(
        "--no-players",
        action="store_true",
        help="substrates only: no management nodes (PIP, VNP, VNO)",
    )
    up.add_argument(
        "--attach",
        action="store_true",
        help="end-user attachment: the VNO's RADIUS server, each PIP's access switch",
    )
    up.add_argument(
        "--switch-vlan",
        action="store_true",
        help="Open vSwitch (userspace) in each PIP's switch namespace, for switch VLANs",
    )
    up.add_argument(
        "--connection",
        choices=("netns", "ssh"),
        default="netns",
        help="how Ansible reaches the hosts: nsenter (default, fast) or an sshd in each host",
    )
    up.add_argument(
        "--encap",
        default="vxlan",
        help="how links between substrate hosts are carried: vxlan (kernel, default), "
        "click (user-level, UDP) or vlan (the switch's VLANs, Open vSwitch); "
        "a list gives PIP i the i-th (click,vlan); a+b offers both, a first (vlan+click: "
        "VLANs inside the PIP, Click offered between PIPs)",
    )
    up.add_argument(
        "--switch",
        choices=("ovsdb", "ssh"),
        default="ovsdb",
        help="how the deployment programs the switch's VLANs (--encap vlan): through OVSDB "
        "(default) or over SSH (an sshd at the switch, its host key in the substrate description)",
    )
    up.add_argument(
        "--players-apart",
        action="store_true",
        help="each player in its own namespace with its own management address",
    )
    up.add_argument("--json", action="store_true", help="machine-readable output")
    up.set_defaults(func=run_up)
    add_device_parser(verbs)
    for verb, func, text in (
        ("status", run_status, "show the lab"),
        ("down", run_down, "remove the lab, its players and every VNet on it"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("--name", default="lab")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)


def run_up(args: argparse.Namespace) -> int:
    spec = testbed.LabSpec(
        name=args.name,
        pips=args.pips,
        hosts=args.hosts,
        cpu=args.cpu,
        memory_mb=args.memory,
        mgmt_offset=args.mgmt_offset,
        players=not args.no_players,
        attach=args.attach,
        switch_vlan=args.switch_vlan,
        encap=args.encap,
        connection=args.connection,
        players_apart=args.players_apart,
        switch=args.switch,
    )
    with Live(args.json) as progress:
        progress(f"bringing up lab {spec.name}: {spec.pips} PIPs of {spec.hosts} hosts"
                 + ("" if spec.players else ", no players"))
        changes = testbed.up(spec, progress=progress)
    state = testbed.status(spec.name)
    if args.json:
        emit_json(
            {
                "lab": spec.name,
                "changed": changes.changed,
                "created": changes.created,
                "substrates": state.substrates,
                "players": state.players,
                "config": asdict(spec),
            }
        )
    else:
        print(
            f"lab {spec.name}: {len(changes.created)} objects created"
            f"{'' if changes.changed else ' (already up)'}"
        )
        for name, player in state.players.items():
            print(f"  {player['role']:4s} {name:6s} {player['url']}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    st = testbed.status(args.name)
    if args.json:
        emit_json(
            {
                "lab": args.name,
                "running": st.running,
                "config": asdict(st.spec) if st.spec else None,
                "substrates": st.substrates,
                "namespaces": st.namespaces,
                "players": st.players,
                "sshd": st.sshd,
            }
        )
    else:
        print(f"lab {args.name}: {'up' if st.running else 'down'}")
        for host in (h for h, up in st.sshd.items() if not up):
            print(f"  sshd of {host} STOPPED")
        for sub in st.substrates:
            print(f"  substrate {sub}")
        for name, player in st.players.items():
            state = "running" if player["running"] else "STOPPED"
            print(f"  {player['role']:4s} {name:6s} {player['url']} {state}")
    return 0 if st.running else 1


def run_down(args: argparse.Namespace) -> int:
    changes = testbed.down(args.name)
    if args.json:
        emit_json({"lab": args.name, "changed": changes.changed, "removed": changes.removed})
    else:
        print(f"lab {args.name}: {len(changes.removed)} objects removed")
    return 0


def add_device_parser(verbs: argparse._SubParsersAction) -> None:
    dev = verbs.add_parser("device", help="end-user devices plugged into PIPs' access ports")
    dverbs = dev.add_subparsers(dest="device_verb", required=True)
    add = dverbs.add_parser("add", help="a device namespace on a new access port")
    add.add_argument("name", help="1-8 lower-case letters or digits")
    add.add_argument("--pip", type=int, default=1, help="the PIP whose access switch (default 1)")
    att = dverbs.add_parser("attach", help="802.1X authentication, then DHCP")
    att.add_argument("name")
    att.add_argument("--identity", required=True, help="user@realm (the realm is the VNO's)")
    add_password_options(att)
    att.add_argument("--timeout", type=float, default=20.0)
    att.add_argument("--eap", choices=attach.EAP_METHODS, default="ttls",
                     help="EAP method: ttls (inner PAP, default), peap (inner MSCHAPv2), or "
                          "md5 (only if the VNO allows it: the PIP sees its hash)")
    det = dverbs.add_parser("detach", help="log off: the PIP takes the port out of the VNet")
    det.add_argument("name")
    rm = dverbs.add_parser("remove", help="unplug and remove the device")
    rm.add_argument("name")
    ls = dverbs.add_parser("list", help="devices and the ports in a VNet now")
    for p in (add, att, det, rm, ls):
        p.add_argument("--lab", default="lab")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=run_device)


def run_device(args: argparse.Namespace) -> int:
    spec = testbed.load_spec(args.lab)
    if not spec.attach:
        raise ValueError(f"lab {args.lab} has no end-user attachment; bring it up with --attach")
    directory = testbed.lab_dir(args.lab)
    substrates = spec.substrates()
    verb = args.device_verb
    if verb == "add":
        record = attach.add_device(directory, substrates, args.name, args.pip)
        result: dict[str, object] = asdict(record)
        text = f"device {record.name} on port {record.port} of pip{record.pip} ({record.mac})"
    elif verb == "attach":
        done = attach.attach(directory, args.name, args.identity, password_of(args),
                             args.timeout, eap=args.eap)
        result = asdict(done)
        text = (f"device {done.device}: {done.outcome} in {done.seconds:.2f} s"
                + (f", address {done.address}" if done.address else "")
                + (f" ({done.detail})" if done.detail else ""))
    elif verb == "detach":
        was = attach.detach(directory, args.name)
        result = {"device": args.name, "was_attached": was}
        text = f"device {args.name}: detached" if was else f"device {args.name}: was not attached"
    elif verb == "remove":
        attach.remove_device(directory, substrates, args.name)
        result = {"device": args.name, "removed": True}
        text = f"device {args.name}: removed"
    else:
        devs = {n: asdict(d) for n, d in attach.devices(directory).items()}
        result = {"devices": devs, "attached": attach.attached(directory)}
        text = "\n".join([f"{n}\tpip{d['pip']}\t{d['port']}\t{d['mac']}" for n, d in devs.items()]
                         + [f"attached: {a['device']} at {a['pip']} realm {a['realm']}"
                            for a in result["attached"]])  # type: ignore[attr-defined]
    if args.json:
        emit_json(result)
    else:
        print(text)
    return 0 if verb != "attach" or result["outcome"] == "connected" else 1
