"""The module Bareos loads for ``Plugin = "python3:module_name=bareos-fd-hyperv:..."``.

Install it into the fd's ``Plugin Directory`` (e.g. /usr/lib/bareos/plugins).  It only registers
the plugin class: ``BareosFdWrapper`` supplies the module-level callbacks the fd looks up by name
and forwards them to the object ``load_bareos_plugin`` creates from the ``@BareosPlugin`` class.
The ``bareos_hyperv`` package must be importable by the fd's Python (installed for the system
python3, or its parent directory given as ``module_path=``); only its standard-library part,
``bareos_hyperv.fd``, is imported here, everything else runs in the agent process.
"""

from BareosFdWrapper import *  # noqa: F403  # the callbacks must live in this module's namespace
from BareosFdWrapper import BareosPlugin

from bareos_hyperv.fd.plugin import BareosFdHyperV


@BareosPlugin
class BareosFdHyperVPlugin(BareosFdHyperV):
    """bareos-fd-hyperv: Hyper-V backup through an out-of-process agent."""
