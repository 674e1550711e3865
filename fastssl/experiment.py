"""`python -m fastssl.experiment`: the command lives in fastssl/eval/experiment.py."""

import sys

from .eval.experiment import main

if __name__ == "__main__":
    sys.exit(main())
