"""Kiln storage service."""
