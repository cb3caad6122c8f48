"""``python -m apitokens``: the ``apitokens`` command."""

import sys

from apitokens.cli import main

sys.exit(main())
