"""``python -m fedpriv``: the ``fedpriv`` command."""

import sys

from fedpriv.cli.main import main

sys.exit(main())
