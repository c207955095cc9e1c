"""The package's one compiled module; everything else is declared in pyproject.toml.

The .ods pre-check's tag reader in C (about 4x less CPU than the same reading in Python). It is
optional: where it cannot be built (no C compiler), the install goes on and the Python reading
runs, with the same verdicts.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("actors.roster._odsscan", sources=["actors/roster/_odsscan.c"], optional=True),
])
