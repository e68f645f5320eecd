"""`python -m pipeline ...` is the `featurize` command."""
import sys

from pipeline.cli import main

sys.exit(main())
