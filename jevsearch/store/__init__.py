"""On-disk parts of an index: LMDB truth (:mod:`.lmdbstore`), the HNSW cache (:mod:`.hnsw`),
the writer lock (:mod:`.lock`) and input checks (:mod:`.validate`). Wired by :mod:`jevsearch.engine`."""
