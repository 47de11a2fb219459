"""Training: targets, augmentation, sampling, batch workers, the loop and its report."""
