"""`python -m locdiff_pipeline.cli`: the `locdiff` command without its console script."""

import sys

from locdiff_pipeline.cli import main

sys.exit(main())
