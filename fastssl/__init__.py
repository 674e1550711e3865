"""fastssl: fast self-supervised pretraining. Commands: `python -m fastssl.<command> --help`
(pretrain, convert, knn, linear, supervised, experiment, report)."""

__version__ = "0.1.0"
