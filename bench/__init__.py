"""Benchmarks: the product against the plain tools, measured in the same run.

Each module ``bench/<name>.py`` exposes ``main(argv) -> int``; ``python -m bench`` runs them all,
``python -m bench smb_read`` one of them.  Figures are MB/s = 10^6 bytes/s over the whole transfer.
"""
