"""Kiln builder: recipes and the image build engine."""
