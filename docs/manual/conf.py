"""Sphinx configuration of the bareos-hyperv manual (reStructuredText, Bareos manual style).

Build: ``make manual`` (``python -m sphinx -W -b html docs/manual build/manual``); the test
tests/docs/test_manual.py builds it with warnings as errors.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from bareos_hyperv import __version__

project = "bareos-hyperv"
author = "bareos-hyperv contributors"
copyright = "bareos-hyperv contributors, AGPL-3.0-or-later"
version = release = __version__

extensions = []
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "transcripts"]
highlight_language = "text"
html_theme = "alabaster"
html_static_path = []
html_title = f"bareos-hyperv {__version__} manual"
pygments_style = "sphinx"
smartquotes = False
