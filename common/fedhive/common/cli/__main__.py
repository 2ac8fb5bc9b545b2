"""``python -m fedhive.common.cli``: the ``fedhive`` command."""

import sys

from fedhive.common.cli import main

sys.exit(main())
