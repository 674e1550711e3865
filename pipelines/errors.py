class DataError(ValueError):
    """Bad or missing input data. Commands print its message as one line and exit with code 2."""


def one_line(e: BaseException) -> str:
    """An exception as one short line, for a DataError that names its cause."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]
