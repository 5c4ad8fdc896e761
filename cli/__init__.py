"""The ``convsync`` command line and what runs the whole pipeline: the top layer.

It imports every component and is imported by none of them (docs/architecture.md).
"""
