"""fdsim: an emulation of the Bareos 25 python3-fd host, for tests.

It drives a plugin module exactly as the real file daemon does and never imports
``bareos_hyperv``.
"""
