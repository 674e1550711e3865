class DataError(ValueError):
    """Bad or missing input data. Commands print its message as one line and exit with code 2."""
