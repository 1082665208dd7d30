"""Adapters that attach the MaskIoU head to detector families; each imports the core."""
