"""vnet's resource description language, RDL v1: model, reading and writing.

``load_vnet``/``parse_vnet`` read VNet descriptions, ``load_substrate``/
``parse_substrate`` substrate descriptions, ``load``/``parse`` either; all
raise :class:`SpecErrors` listing every problem of the failing phase.
``dump_vnet``/``dump_substrate`` write schema-valid documents that read back
to equal objects.
"""

from vnetlib.spec.errors import SpecError, SpecErrors
from vnetlib.spec.model import RDL_NAMESPACE, RDL_VERSION, Substrate, VNetSpec
from vnetlib.spec.parse import (
    load,
    load_substrate,
    load_vnet,
    parse,
    parse_substrate,
    parse_vnet,
    schema,
)
from vnetlib.spec.serialize import dump_substrate, dump_vnet

__all__ = [
    "RDL_NAMESPACE",
    "RDL_VERSION",
    "SpecError",
    "SpecErrors",
    "Substrate",
    "VNetSpec",
    "dump_substrate",
    "dump_vnet",
    "load",
    "load_substrate",
    "load_vnet",
    "parse",
    "parse_substrate",
    "parse_vnet",
    "schema",
]
