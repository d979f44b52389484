"""The kiln command-line client."""
