"""preprocess_model."""
