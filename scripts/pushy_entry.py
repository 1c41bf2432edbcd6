"""Entry script for the PyInstaller build: the same ``main()`` as the ``pushy`` console script."""

import sys

from pushy_appliance.cli import main

if __name__ == "__main__":
    sys.exit(main())
