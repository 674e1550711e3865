"""The race: SimCLR trained by fastssl and by the SSL code people already use, on the same images,
backbone, batch, epochs, schedule shape, projection and temperature, one after the other in one
process tree; speed and accuracy side by side, every backbone scored by one shared kNN.

    python -m benchmarks.race --data-dir data --out benchmarks/results/race           # CPU default
    python -m benchmarks.race --entrants fastssl,lightly:lars=fastssl --seeds 0,1,2    # an ablation

An entrant is one module with `train(spec, knobs, out, device) -> record`, `available()`,
`DIFFERENCES` (what it does differently from fastssl at the same recipe) and `KNOBS`; adding a peer
(solo-learn, ...) is one file plus one line here.
"""

from . import fastssl_entrant, lightly_entrant, plain_entrant

ENTRANTS = {
    "fastssl": fastssl_entrant,
    "lightly": lightly_entrant,
    "plain": plain_entrant,
}
