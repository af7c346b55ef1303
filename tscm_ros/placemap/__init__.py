"""placemap."""
