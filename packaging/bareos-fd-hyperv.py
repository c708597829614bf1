"""The module Bareos loads for ``Plugin = "python3:module_name=bareos-fd-hyperv:..."``.

It goes into the fd's ``Plugin Directory`` (e.g. /usr/lib/bareos/plugins): the Debian and RPM
packages install it there, and ``bareos-hyperv install-plugin --plugin-dir DIR`` installs it from
a wheel, adding a line that finds the ``bareos_hyperv`` package where it was installed (a
``module_path=`` in the plugin string comes first).  It only registers the plugin class:
``BareosFdWrapper`` supplies the module-level callbacks the fd looks up by name and forwards them
to the object ``load_bareos_plugin`` creates from the ``@BareosPlugin`` class.  Only the
standard-library part of the package, ``bareos_hyperv.fd``, is imported here; everything else runs
in the agent process, started with the interpreter of the environment the package lives in.
"""

from BareosFdWrapper import *  # noqa: F403  # the callbacks must live in this module's namespace
from BareosFdWrapper import BareosPlugin

from bareos_hyperv.fd.plugin import BareosFdHyperV


@BareosPlugin
class BareosFdHyperVPlugin(BareosFdHyperV):
    """bareos-fd-hyperv: Hyper-V backup through an out-of-process agent."""
