"""``python -m mailserver``: the administration command."""

import sys

from mailserver.cli import main

sys.exit(main())
