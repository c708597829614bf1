"""The fd <-> agent wire protocol: versioned messages and their framing (standard library only).

``messages`` defines what is said, ``framing`` how it travels (length-prefixed JSON over a Unix
socket pair, pipe ends passed with SCM_RIGHTS).  Both sides import only this package and
``bareos_hyperv.errors`` to talk, so the fd side stays free of third-party code.
"""
