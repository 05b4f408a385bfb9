"""retrieve_generate_model."""
