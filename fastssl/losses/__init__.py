"""Losses as pure functions of tensors, one family per file, beside its method in fastssl/methods/:

    nt_xent.py   NT-Xent, SimCLR's contrastive loss (methods/simclr.py)
    infomax.py   Deep InfoMax's MI estimators and prior matching (methods/infomax.py)
    byol.py      BYOL's regression loss, 2 - 2 cos (methods/byol.py)
    vicreg.py    VICReg's variance-invariance-covariance loss (methods/vicreg.py)
    barlow.py    Barlow Twins' cross-correlation loss (methods/barlow.py)

`from fastssl.losses import nt_xent` is the function, not the module of the same name: the import
below rebinds the name, so the public call `fastssl.losses.nt_xent(z1, z2, temperature)` works.
"""

from .barlow import barlow_loss, cross_correlation
from .byol import byol_loss, regression_loss
from .infomax import DIM_ESTIMATORS, infonce_mi, jsd_mi, local_scores, prior_matching_loss, reverse_gradient
from .nt_xent import nt_xent, nt_xent_chunked, nt_xent_compiled
from .vicreg import vicreg_loss

__all__ = [
    "DIM_ESTIMATORS",
    "barlow_loss",
    "byol_loss",
    "cross_correlation",
    "regression_loss",
    "vicreg_loss",
    "infonce_mi",
    "jsd_mi",
    "local_scores",
    "nt_xent",
    "nt_xent_chunked",
    "nt_xent_compiled",
    "prior_matching_loss",
    "reverse_gradient",
]
