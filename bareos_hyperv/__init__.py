"""bareos-hyperv: back up and restore Hyper-V VMs from a Bareos file daemon on Linux.

This module must stay import-free: the Bareos file daemon imports the package
inside its own (sub-)interpreter, where only the standard library may load.
"""

__version__ = "0.1.0"
