"""fdsim: an emulation of the Bareos 25 python3-fd host, for tests.

It drives a plugin module exactly as the real file daemon does and never imports
``bareos_hyperv``.

Pieces (specification: the team reference ``shared/reference/bareos-python-fd.md``):

- :mod:`fdsim.fd` - :class:`~fdsim.fd.FdSim`, the emulated fd core: backup (F/I/D, accurate),
  restore (most recent, one job, file filter, ``where``, ``regexwhere``/``strip_prefix``/
  ``add_prefix``/``add_suffix``, ``replace``, ``pluginoptions``), estimate, cancel from another
  thread, several jobs at once (one thread each); returns :class:`~fdsim.fd.JobResult` (JobStatus
  T/E/f/A, job log, debug messages, items, bytes, FD errors, store JobId, plugin call trace, and
  the director's report: :class:`~fdsim.fd.JobReport` with "Backup OK"/"*** Restore Error ***"...,
  FD termination status, FD errors, files written or restored).
- :mod:`fdsim.interp` - one fresh CPython sub-interpreter per job (``_xxsubinterpreters``,
  legacy/shared-GIL like ``Py_NewInterpreter``), talking to the host over OS pipes, so
  extension modules that refuse a second interpreter (lxml, cryptography/PyO3) fail on the
  second job exactly as under Bareos.
- :mod:`fdsim.pyfiles` - what the sub-interpreter imports: ``bareosfd`` (constants, packets
  and member rules of the C module), ``BareosFdPluginBaseclass``, ``BareosFdWrapper``.
- :mod:`fdsim.plugstring` - the C-side plugin string parsing and override merge.
- :mod:`fdsim.dirconf` - what the director makes of a FileSet's ``Plugin = "..."`` in
  bareos-dir.conf (``lib/lex.cc``: ``\\:`` arrives as ``:``) and of a bconsole command's
  ``pluginoptions=`` (``lib/scan.cc``); ``FdSim.backup_fileset(conf)`` runs a FileSet as written.
- :mod:`fdsim.breg` - Bareos's where-regexps (``lib/breg.cc``) for relocated restores.
- :mod:`fdsim.store` - save-set volumes and catalog (safe for concurrent jobs), restore
  selection, ``list files``.

Example::

    from fdsim.fd import FdSim
    sim = FdSim("/tmp/fdsim-store")
    r = sim.backup("python3:module_name=bareos-fd-hyperv:host=hv01:vm=web01", plugin_dir="packaging/plugins")
    print(r.status, r.log())
    print(sim.store.format_listing(r.jobid))
    sim.restore(None, where="/tmp/bareos-restores", pluginoptions="python3:restore_local=yes")

A backup whose fileset phase ends in a fatal error (or a cancel) fails its storage-daemon
handshake as in a real fd: three more fatal lines, no backup command, and the ~36 s the real
daemons take recorded in ``JobResult.modelled_seconds`` (not slept).

A cancel raises bEventCancelCommand on the caller's thread before the job is marked canceled;
meanwhile the job thread reads on, and the read in flight returns before the job stops (filed
dir_cmd.cc CancelCmd, backup.cc): plugins must expect IO_READ calls after the cancel event.

Known differences from the real fd: no hard-link detection, no Options-block plugins
(``handle_backup_file``), no verify jobs, no digests/compression/encryption of the stream,
no clock-skew correction of the since time, single-part restores (bEventStartRestoreJob once).
"""
