"""`python -m cai_pipeline.cli ...` is `cai ...`."""

import sys

from cai_pipeline.cli import main

sys.exit(main())
