"""Files fdsim puts on each job sub-interpreter's sys.path.

``bareosfd`` (the module the real fd builds in C), the shipped Bareos pyfiles
``BareosFdPluginBaseclass`` and ``BareosFdWrapper``, and the fdsim guest loop
``_fdsim_guest`` with its framing ``_fdsim_wire``.  Inside a sub-interpreter they are imported
as top-level modules; the host imports them as ``fdsim.pyfiles.*`` only for constants and
framing.
"""
