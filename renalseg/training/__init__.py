"""Training: the DAE stage and the segmentation stage (losses, data, loop)."""
