"""faiss indexes: build, save/load with a manifest, search, exact kNN graphs in blocks."""
