"""`python -m fastssl.knn`: the command lives in fastssl/eval/knn.py."""

import sys

from .eval.knn import main

if __name__ == "__main__":
    sys.exit(main())
