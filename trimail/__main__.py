"""``python -m trimail`` runs the ``trimail`` command."""

import sys

from .cli import main

sys.exit(main())
