"""`python -m fastssl.linear`: the command lives in fastssl/eval/linear.py."""

import sys

from .eval.linear import main

if __name__ == "__main__":
    sys.exit(main())
