"""fdsim: an emulation of the Bareos 25 python3-fd host, for tests.

It drives a plugin module exactly as the real file daemon does and never imports
``bareos_hyperv``.

Pieces (specification: the team reference ``shared/reference/bareos-python-fd.md``):

- :mod:`fdsim.fd` - :class:`~fdsim.fd.FdSim`, the emulated fd core: backup (F/I/D, accurate),
  restore (most recent, one job, file filter, ``where``, ``replace``, ``pluginoptions``),
  estimate, cancel from another thread; returns :class:`~fdsim.fd.JobResult` (JobStatus
  T/E/f/A, job log, debug messages, items, bytes, FD errors, store JobId, plugin call trace).
- :mod:`fdsim.interp` - one fresh CPython sub-interpreter per job (``_xxsubinterpreters``,
  legacy/shared-GIL like ``Py_NewInterpreter``), talking to the host over OS pipes, so
  extension modules that refuse a second interpreter (lxml, cryptography/PyO3) fail on the
  second job exactly as under Bareos.
- :mod:`fdsim.pyfiles` - what the sub-interpreter imports: ``bareosfd`` (constants, packets
  and member rules of the C module), ``BareosFdPluginBaseclass``, ``BareosFdWrapper``.
- :mod:`fdsim.plugstring` - the C-side plugin string parsing and override merge.
- :mod:`fdsim.store` - save-set volumes and catalog, restore selection, ``list files``.

Example::

    from fdsim.fd import FdSim
    sim = FdSim("/tmp/fdsim-store")
    r = sim.backup("python3:module_name=bareos-fd-hyperv:host=hv01:vm=web01", plugin_dir="packaging/plugins")
    print(r.status, r.log())
    print(sim.store.format_listing(r.jobid))
    sim.restore(None, where="/tmp/bareos-restores", pluginoptions="python3:restore_local=yes")

Known differences from the real fd: no hard-link detection, no Options-block plugins
(``handle_backup_file``), no verify jobs, no digests/compression/encryption of the stream,
no clock-skew correction of the since time, single-part restores (bEventStartRestoreJob once).
"""
