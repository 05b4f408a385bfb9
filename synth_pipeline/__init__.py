"""synth_pipeline."""
