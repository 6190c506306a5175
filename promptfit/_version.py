"""promptfit's version, in a module that imports nothing.

Why a module of its own: ``saving.program_io`` and ``callbacks.monitor`` write the version into
files and runs; reading it from ``promptfit/__init__`` made them import the package root, which
imports them back (it worked only because ``__init__`` set the name before its imports).
``pyproject.toml`` reads the version from here too (``[tool.setuptools.dynamic]``), so there is
one source of truth, as in ``keras/src/version.py``.
"""

__version__ = "0.1.0"
