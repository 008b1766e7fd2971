"""What pyproject.toml cannot declare about the build (the rest is there).

The package list: vnetlib's packages are found, so a new subpackage needs no
edit, and the Ansible collection is the package ansible_collections.vnet.infra,
which [tool.setuptools.package-dir] maps to the repository root and whose
files [tool.setuptools.package-data] lists. As that package's directory is
the root, build_py must take no Python module from it (setup.py itself would
land in the collection).

An editable install (pip install -e) leaves the collection out: Ansible finds
collections on disk, not through import hooks, so an editable mapping of
ansible_collections.vnet.infra onto the checkout would not help it, and in a
process that imports the collection as Python (tests/ansible) it gives the
package a second path, which Ansible's collection loader rejects. vnetlib
finds the checkout's collection by itself (vnetlib/deploy/ansible.py).
"""

from __future__ import annotations

from typing import Any

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

COLLECTION_PACKAGE = "ansible_collections.vnet.infra"


class BuildPy(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> Any:
        if package == COLLECTION_PACKAGE:
            return []
        return super().find_package_modules(package, package_dir)


class EditableWheel(editable_wheel):
    def run(self) -> None:
        dist = self.distribution
        dist.packages = [p for p in dist.packages if p != COLLECTION_PACKAGE]
        for mapping in (dist.package_dir, dist.package_data):
            if mapping:
                mapping.pop(COLLECTION_PACKAGE, None)
        super().run()


setup(
    packages=[*find_packages(include=["vnetlib", "vnetlib.*"]), COLLECTION_PACKAGE],
    cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel},
)
