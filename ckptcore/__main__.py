"""``python -m ckptcore``: the ``ckptcore`` command line (see :mod:`ckptcore.cli`)."""

import sys

from ckptcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
