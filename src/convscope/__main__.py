"""``python -m convscope ...`` runs the command line (the same as the ``convscope`` command)."""

import sys

from convscope.frontends.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
