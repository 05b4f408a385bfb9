"""ragless."""
