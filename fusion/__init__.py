"""fusion layer."""
