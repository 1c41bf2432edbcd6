"""The ``pushy`` command: server, agent and operator CLI in one program (``APPLIANCE.md`` §1).

Exit codes: 0 success; 1 the thing ran but did not succeed (a job that did not fully
succeed, a store that failed verification); 2 usage or configuration errors; 3 the server
could not be reached or refused the request.
"""

from __future__ import annotations

import sys

from ._main import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
