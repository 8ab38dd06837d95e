"""schemas component."""
