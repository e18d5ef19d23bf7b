"""Lightning training modules."""
