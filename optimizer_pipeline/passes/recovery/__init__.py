"""Recovery fine-tuning: distilling from the original, with augmentation of unlabeled data."""
