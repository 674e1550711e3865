"""`python -m fastssl.report`: the command lives in fastssl/eval/report.py."""

import sys

from .eval.report import main

if __name__ == "__main__":
    sys.exit(main())
