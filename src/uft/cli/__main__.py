"""``python -m uft.cli``."""

from uft.cli import main

main()
