"""``python -m cli``: the same as the ``convsync`` command."""

from cli.main import main

main()
