# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: substrate
short_description: Substrate hosts of a vnet substrate description (RDL)
version_added: 0.1.0
description:
  - Reads a PIP's substrate description (the RDL document C(<substrate>), as in
    C(examples/lab-substrate.xml) or C($VNET_HOME/substrates/NAME/substrate.xml))
    and makes one inventory host per C(<host>), so operators point Ansible at the
    description instead of a generated inventory.
  - Every host is in the group O(group) and in C(location_LOCATION) for its
    location; the substrate's name is the variable C(vnet_lab) of every host,
    its data and management addresses are C(vnet_data_address) and
    C(vnet_mgmt_address).
  - With O(connection=netns) (the local lab) hosts are reached in their network
    namespaces (C(vl-SUBSTRATE-HOST)) with the P(vnet.infra.netns#connection)
    connection, as the inventory that C(vnet lab up) writes; with
    O(connection=ssh) over SSH at their management address.
  - Parses with vnetlib (validating against the RDL schema) when it is
    importable, else with lxml, else with the Python standard library.
  - The configuration file's name must end in C(.vnet.yml) or C(.vnet.yaml).
author: vnet developers (@vnet)
options:
  plugin:
    description: The name of this plugin; V(vnet.infra.substrate) makes the file its own.
    type: str
    required: true
    choices: [vnet.infra.substrate]
  substrate:
    description:
      - Path of the substrate description; a relative path is relative to the
        configuration file's directory. C(~) and environment variables are expanded.
    type: str
    required: true
  connection:
    description:
      - How Ansible reaches the hosts. V(netns) enters each host's namespace on
        the controller (the local lab); V(ssh) connects to each host's
        management address.
    type: str
    choices: [netns, ssh]
    default: netns
  group:
    description: The group that holds every host of the substrate.
    type: str
    default: substrate
"""

EXAMPLES = r"""
# substrate.vnet.yml, for a lab brought up by `vnet lab up`:
#   ansible-inventory -i substrate.vnet.yml --list
#   ansible-playbook -i substrate.vnet.yml vnet.infra.deploy_vnet -e @plan.yml
plugin: vnet.infra.substrate
substrate: /var/lib/vnet/substrates/labp1/substrate.xml

# Real hosts reached over SSH at their management addresses:
# plugin: vnet.infra.substrate
# substrate: pip1-substrate.xml
# connection: ssh
"""

import os
import re
from xml.etree import ElementTree

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin

try:
    from ansible.template import trust_as_template  # ansible-core 2.19: data tagging
except ImportError:
    def trust_as_template(value):
        return value

try:
    from vnetlib.spec import load_substrate
except ImportError:
    load_substrate = None

try:
    from lxml import etree as lxml_etree
except ImportError:
    lxml_etree = None

RDL = "{urn:vnet:rdl:1}"


def _host_netns_copy(substrate, host):
    """vnetlib.naming.host_netns, for a controller without vnetlib (a unit test
    checks that both agree)."""
    return f"vl-{substrate}-{host}"


try:
    from vnetlib.naming import host_netns as _netns
except ImportError:
    _netns = _host_netns_copy


def _group_name(text):
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _read_with_vnetlib(path):
    model = load_substrate(path)
    hosts = [dict(name=h.name, location=h.location, data_address=h.data_address,
                  mgmt_address=h.mgmt_address) for h in model.hosts]
    return model.name, hosts


def _read_xml(path):
    if lxml_etree is not None:
        root = lxml_etree.parse(path, lxml_etree.XMLParser(resolve_entities=False,
                                                           no_network=True)).getroot()
    else:
        root = ElementTree.parse(path).getroot()
    if root.tag != RDL + "substrate":
        raise ValueError(f"the root element is {root.tag}, not substrate of urn:vnet:rdl:1")
    hosts = [dict(name=h.get("name"), location=h.get("location"),
                  data_address=h.get("data-address"), mgmt_address=h.get("mgmt-address"))
             for h in root.findall(RDL + "host")]
    return root.get("name"), hosts


class InventoryModule(BaseInventoryPlugin):

    NAME = "vnet.infra.substrate"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(
            (".vnet.yml", ".vnet.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        description = os.path.join(
            os.path.dirname(os.path.abspath(path)),
            os.path.expanduser(os.path.expandvars(self.get_option("substrate"))))
        try:
            if load_substrate is not None:
                name, hosts = _read_with_vnetlib(description)
            else:
                name, hosts = _read_xml(description)
        except Exception as exc:
            raise AnsibleParserError(f"{path}: cannot read the substrate description "
                                     f"{description}: {to_native(exc)}") from exc
        group = self.inventory.add_group(self.get_option("group"))
        connection = self.get_option("connection")
        for host in hosts:
            added = self.inventory.add_host(host["name"], group=group)
            hostvars = dict(vnet_lab=name)
            if host["data_address"]:
                hostvars["vnet_data_address"] = host["data_address"]
            if host["mgmt_address"]:
                hostvars["vnet_mgmt_address"] = host["mgmt_address"]
            if connection == "netns":
                hostvars.update(ansible_connection="vnet.infra.netns",
                                ansible_netns_name=_netns(name, host["name"]),
                                ansible_python_interpreter=trust_as_template(
                                    "{{ ansible_playbook_python }}"))
            else:
                hostvars.update(ansible_connection="ssh",
                                ansible_host=host["mgmt_address"] or host["name"])
            for key, value in hostvars.items():
                self.inventory.set_variable(added, key, value)
            if host["location"]:
                location = self.inventory.add_group("location_" + _group_name(host["location"]))
                self.inventory.add_child(location, added)
