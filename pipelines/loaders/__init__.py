"""One backend per file, each building a `Loader` of `Batch`es: gpu.py, torchvision.py, dali.py,
ffcv.py (with ffcv_order.py). `pipelines.build(name, data)` picks one by name (pipelines.PIPELINES)."""
