"""The names of the trainer's choices, without torch (so that the CLI checks options before importing it)."""

POOLS = ("avg", "max", "flatten", "gem")
HEADS = ("none", "linear", "mlp")
FEATURES = ("body", "pooled", "pre-bn", "post-bn")
OPTIMIZERS = ("adam", "sgd")
