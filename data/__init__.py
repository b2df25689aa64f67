"""The embedding store: Parquet schema, validation, importers, data set layouts, synthetic data."""
