"""Self-supervised methods. A method is a small nn.Module:

    method = METHODS[name](cfg, num_classes)   # cfg: the command's config dataclass
    loss, logs = method(batch)                 # batch: pipelines.Batch; logs: dict of 0-d tensors
    loss, logs, y = method(batch, features=True)  # y: the pooled backbone features computed
    method.backbone                            # the network whose features are evaluated
    method.recipe                              # which augmentation recipe its pipeline must use

The training loop knows nothing else about a method, so adding one is one file plus one line here.
"""

from .autoencoder import Autoencoder
from .infomax import DeepInfoMax
from .simclr import SimCLR
from .supervised import Supervised

METHODS = {
    "simclr": SimCLR,
    "supervised": Supervised,
    "autoencoder": Autoencoder,
    "dim": DeepInfoMax,
}
