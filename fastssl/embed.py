"""`python -m fastssl.embed`: the command lives in fastssl/eval/embed.py."""

import sys

from .eval.embed import main

if __name__ == "__main__":
    sys.exit(main())
