"""connectors component."""
