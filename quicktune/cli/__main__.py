"""``python -m quicktune.cli``: the same as the ``quicktune`` console script (used by local workers)."""

import sys

from quicktune.cli import main

sys.exit(main())
