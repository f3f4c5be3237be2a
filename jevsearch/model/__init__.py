"""jina-embeddings-v4 for jevsearch: processor (no weights), strict checkpoint loading, encoder.

>>> from jevsearch.model import JinaV4Encoder
>>> enc = JinaV4Encoder.from_pretrained("/models/jina-embeddings-v4")   # snapshot dir or hub id
>>> enc.encode_texts(["how do transformers work?"]).single.shape
(1, 2048)

``python -m jevsearch.model.tiny DIR`` writes a tiny checkpoint with random weights for tests.
"""

from jevsearch.model.encoder import Embeddings, JinaV4Encoder, plan_batches
from jevsearch.model.processor import JinaV4Processor

__all__ = ["Embeddings", "JinaV4Encoder", "JinaV4Processor", "plan_batches"]
