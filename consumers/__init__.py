"""consumers component."""
