"""The `vnet` command's start: a verb imports what it needs, not every verb's
modules (issue #8: `vnet up` through the players is timed as the user runs it).

Each case runs in a fresh interpreter and lists the modules it ended up with."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from vnetlib.cli.main import VERBS, build_parser, exit_code

# What a client of the players never needs: the server's HTTP stack, the
# ledger's database layer, the PIP core, the lab's manager.
HEAVY = ("aiohttp", "sqlalchemy", "vnetlib.players.transport", "vnetlib.core.pip",
         "vnetlib.instantiate", "vnetlib.lab.manage")

PROBE = """
import contextlib, io, json, sys
from vnetlib.cli.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as done:
        code = done.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded(*argv: str) -> tuple[object, set[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True,
                          text=True, check=True, timeout=60)
    out = json.loads(done.stdout)
    return out["code"], set(out["modules"])


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY}


def test_help_imports_no_verb() -> None:
    code, modules = loaded("--help")
    assert code == 0
    assert heavy(modules) == set()
    verbs = {f"vnetlib.cli.{v.module}" for v in VERBS}
    assert modules & verbs == set()
    assert not {"lxml.etree", "vnetlib.players.messages"} & modules


def test_a_verb_imports_only_itself() -> None:
    code, modules = loaded("up", "--help")
    assert code == 0
    assert heavy(modules) == set()
    assert {f"vnetlib.cli.{v.module}" for v in VERBS} & modules == {"vnetlib.cli.up"}


def test_every_verb_registers_its_listed_help() -> None:
    """The table of verbs in main.py says what each verb module registers."""
    for argv in (None, ["drain", "h1"], ["up", "x.xml"]):
        sub = next(a for a in build_parser(argv)._actions
                   if isinstance(a, argparse._SubParsersAction))
        helps = {a.dest: a.help for a in sub._choices_actions}
        assert sorted(sub.choices) == sorted(v.name for v in VERBS)
        assert helps == {v.name: v.help for v in VERBS}


def test_exit_codes_of_loaded_error_classes() -> None:
    from vnetlib.deploy.ansible import DeployError
    from vnetlib.placement import EmbeddingRejected
    from vnetlib.players.client import ClientError, RemoteError
    from vnetlib.spec import SpecError, SpecErrors

    assert exit_code(SpecErrors([SpecError("f.xml", 1, "/vnet", "bad")])) == (2, "invalid-spec")
    rejected = EmbeddingRejected.__new__(EmbeddingRejected)  # its Rejection is beside the point
    assert exit_code(rejected) == (3, "rejected")
    assert exit_code(DeployError("failed", [], "")) == (4, "deploy-failed")
    assert exit_code(KeyError("x")) == (5, "not-found")
    assert exit_code(RemoteError(404, "not-found", "no such VNet", b"")) == (5, "not-found")
    assert exit_code(RemoteError(409, "busy", "later", b"")) == (7, "remote-error")
    assert exit_code(ClientError("down")) == (8, "unreachable")
    assert exit_code(RuntimeError("x")) == (9, "failed")


def test_up_through_the_players_imports_the_client_only() -> None:
    """The client side of `vnet up --lab`: up to the point where it would call the
    VNO (here: a lab that does not exist, exit 5)."""
    code, modules = loaded("up", "examples/figure6-vm.xml", "--lab", "no-such-lab-d7")
    assert code == 5
    assert heavy(modules) == set()


def test_stitching_range_is_the_ledgers() -> None:
    """players.messages writes the ledger's VNI range out (no ledger import)."""
    from vnetlib.core import ledger
    from vnetlib.players import messages

    assert (messages.STITCH_VNI_MIN, messages.STITCH_VNI_MAX) == (ledger.VNI_MIN,
                                                                  ledger.VNI_MAX)
