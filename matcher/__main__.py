"""``python -m matcher`` runs the ``matcher`` command group."""

from matcher.cli import main

main()
