"""``python -m ScancoUnitsLib.cli``: the ``scanco-units`` command line without the installed script."""

import sys

from .main import main

sys.exit(main())
