"""Kiln's shared runtime: settings, logging, processes, gRPC serving, events."""
