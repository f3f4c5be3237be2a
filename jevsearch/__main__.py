"""``python -m jevsearch`` runs the command-line interface (see :mod:`jevsearch.cli`)."""

import sys

from jevsearch.cli import main

sys.exit(main())
