"""Evaluation of frozen backbones: features, kNN, the linear protocol, experiments, reports, plots.

The commands stay where users call them (`python -m fastssl.knn`, `fastssl.linear`,
`fastssl.experiment`, `fastssl.report`); those modules are thin entry points into this package.
"""
