"""Build hook: ship the module Bareos loads (packaging/bareos-fd-hyperv.py) inside the package.

Everything else is declared in setup.cfg.  The entry file has one home in the source tree,
packaging/, where the tests and the fd emulation load it from; the wheel carries a copy as
``bareos_hyperv/plugin/bareos-fd-hyperv.py`` for ``bareos-hyperv install-plugin``.
"""

from __future__ import annotations

import os
from typing import List

from setuptools import setup
from setuptools.command.build_py import build_py

ENTRY_SOURCE = os.path.join("packaging", "bareos-fd-hyperv.py")
ENTRY_TARGET = os.path.join("bareos_hyperv", "plugin", "bareos-fd-hyperv.py")


class BuildPyWithPluginEntry(build_py):
    """``build_py`` plus the plugin entry file as package data."""

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, ENTRY_TARGET)
        self.mkpath(os.path.dirname(target))
        self.copy_file(ENTRY_SOURCE, target, preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> List[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, ENTRY_TARGET)]


setup(cmdclass={"build_py": BuildPyWithPluginEntry})
