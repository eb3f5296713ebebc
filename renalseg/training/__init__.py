"""Training: the DAE stage and the segmentation stage.

``config`` (the recipe), ``data`` and ``augment`` (cases and patches), ``batches``,
``network``, ``losses``, ``steps`` (one optimiser step), ``checkpoints``,
``metrics_log``, ``distributed`` (torchrun) and ``loop`` (:func:`~renalseg.training.loop.train`).
"""
