"""`python -m mmdlm` (and `accelerate launch -m mmdlm`) run the CLI."""
import sys

from .cli import main

sys.exit(main())
