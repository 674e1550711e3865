"""What a dataset is: arrays.py (ArrayDataset), splits.py, cifar.py, imagefolder.py. Imports only the
base floor (errors, files); `pipelines.datasets` is the door that chooses among them."""
