"""Versions and channels: build numbers, the channels of a recipe name, their
rules (who may enter, after how long), revocation and channel bases."""
