"""`python -m mmviz.cli` (and `torchrun -m mmviz.cli finetune ...`) run the command line."""
import sys

from . import main

sys.exit(main())
