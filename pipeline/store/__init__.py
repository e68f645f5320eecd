"""A finished store: schema, fingerprint, readers, FeatureStore, search, index. Never imports Beam, TensorFlow or pandas at import."""
