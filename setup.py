"""Builds the native webhook mapper; everything else is configured in pyproject.toml.

The extension carries the SHA-256 of its source, so a stale build is detected
(producers/webhook/native.py) instead of silently mapping with old code.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "producers/webhook/_fastmap.c"
SOURCE_SHA = hashlib.sha256(Path(SOURCE).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "producers.webhook._fastmap",
            [SOURCE],
            define_macros=[("FASTMAP_SOURCE_SHA", f'"{SOURCE_SHA}"')],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            # Without a C compiler convsync still installs and maps in Python (a warning
            # says so at start); the test suite requires the native build.
            optional=True,
        )
    ]
)
