"""Moving virtual nodes between substrate hosts (issue #13): the pure parts
(where the node's links go, what each host must add and remove) used by
`vnetlib.core.pip.PipCore.migrate`."""
