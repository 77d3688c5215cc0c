"""pretune: pretrain a transformer on unlabeled text, then fine-tune it on a few labels."""

__version__ = "0.1.0"
