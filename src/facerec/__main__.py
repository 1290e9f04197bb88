"""`python -m facerec ...` (also what `torchrun -m facerec train ...` runs)."""

import sys

from facerec.cli.main import main

sys.exit(main())
