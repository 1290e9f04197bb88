"""`python -m facerec ...` (also what `torchrun -m facerec train ...` runs)."""

import sys

from facerec.cli import main

sys.exit(main())
