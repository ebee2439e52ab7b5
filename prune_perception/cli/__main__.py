"""`python -m prune_perception.cli` = `prune-perception`."""

import sys

from prune_perception.cli import main

sys.exit(main())
