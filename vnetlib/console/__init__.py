"""Out-of-VNet consoles (the console half of Interface 5): a chain of relays
SP -> VNO -> VNP -> ... -> PIP -> node, one hop per player, each knowing only
its next hop. See `vnetlib.console.relay` for the wire protocol."""
