"""The PIP core: one ledger per substrate, the sliver state machine, and the
embed -> plan -> deploy -> rollback path, shared by the PIP management node
(`vnetlib.players.pip`) and the operator's direct path (`vnetlib.instantiate`).

Nothing here speaks HTTP or knows the lab tool: a core is built from a
substrate description (RDL), a ledger URL and a deployer.
"""
