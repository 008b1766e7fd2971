"""What pyproject.toml cannot declare about the build (the rest is there).

The package list: vnetlib's packages are found, so a new subpackage needs no
edit, and the Ansible collection is the package ansible_collections.vnet.infra,
which [tool.setuptools.package-dir] maps to the repository root and whose
files [tool.setuptools.package-data] lists. As that package's directory is
the root, build_py must take no Python module from it (setup.py itself would
land in the collection).
"""

from __future__ import annotations

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

COLLECTION_PACKAGE = "ansible_collections.vnet.infra"


class BuildPy(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        if package == COLLECTION_PACKAGE:
            return []
        modules: list[tuple[str, str, str]] = super().find_package_modules(package, package_dir)
        return modules


setup(
    packages=[*find_packages(include=["vnetlib", "vnetlib.*"]), COLLECTION_PACKAGE],
    cmdclass={"build_py": BuildPy},
)
