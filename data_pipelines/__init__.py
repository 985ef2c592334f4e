"""Data pipelines: PyAV decoding, TFDS/ArrayRecord builders, Grain streaming, synthetic set."""
