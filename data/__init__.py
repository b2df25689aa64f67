"""The embedding store: Parquet schema, validation, importers, data set layouts, synthetic data."""

from pathlib import Path

SAMPLE_EMBEDDINGS = Path(__file__).parent / "sample" / "sample.parquet"
"""The bundled sample: `retrieve synth --preset small --seed 0` (300 queries, 2,000 gallery, 128-D, 6 cameras)."""
