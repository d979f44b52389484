"""Kiln's publisher: takes stored images to OpenStack Glance and to a marketplace of
signed metadata entries."""
