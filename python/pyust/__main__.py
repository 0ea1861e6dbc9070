"""``python -m pyust``: the same program as the ``pyust`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
