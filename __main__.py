"""``python -m fleetwave``: the same command line as the ``fleetwave`` script."""

import sys

from fleetwave.cli import main

sys.exit(main())
