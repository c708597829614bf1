"""hvsim: a simulated Hyper-V failover cluster that answers WS-Management like Windows.

It implements the *other side* of the protocol and never imports ``bareos_hyperv``.
"""
