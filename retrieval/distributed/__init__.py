"""Beyond one machine: the engine's jobs sharded over a Ray cluster, with one-process results.

    cluster    --ray local[:N] | auto | ADDRESS: start or join a cluster, one-line errors
    tasks      remote functions with retries, progress over shards, errors unwrapped, a fault hook
    shards     which rows of which files (data.dataset parts) each worker reads
    ranking    exact ranks over gallery shards: two rounds of counts, merged top lists
    evaluate   the evaluate job's stages on a cluster (plain, re-ranked)
    rerank     the exact k-reciprocal neighbourhood graph from shard tasks
    verify     query × gallery verification trials over gallery shards
    index      sharded indexes: build (one trained quantizer, a file per shard) and search

Ray is optional (``pip install "retrieve[ray]"``): nothing here is imported unless ``--ray`` (or a
sharded index) asks for it. The numeric kernels stay in ``eval`` and ``indexes``; this package only
moves their inputs and results (see docs/scaling.md).
"""
