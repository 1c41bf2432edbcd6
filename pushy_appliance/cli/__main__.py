"""``python -m pushy_appliance.cli``: the ``pushy`` command without the console script."""

from __future__ import annotations

import sys

from ._main import main

sys.exit(main())
