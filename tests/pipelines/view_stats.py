"""Comparing two pipelines' augmented views by statistics (shared by the pipeline tests)."""
import numpy as np


def assert_same_channel_moments(ours, theirs, sigmas=5.0):
    """Per-image channel moments are independent draws (crop and colour are drawn per image), so
    the two pipelines' average first and second moments must agree within `sigmas` standard errors.
    Coarse on purpose: a wrong normalisation, channel order or scale fails it by far."""
    for c in range(3):
        for power in (1, 2):
            a, b = (v[:, c].double().pow(power).mean((1, 2)).numpy() for v in (ours, theirs))
            err = sigmas * np.sqrt(a.var() / len(a) + b.var() / len(b))
            assert abs(a.mean() - b.mean()) < err, (c, power, a.mean(), b.mean(), err)
