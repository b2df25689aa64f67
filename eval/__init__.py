"""The evaluator: protocol masks, ranking and verification metrics, k-reciprocal re-ranking."""
