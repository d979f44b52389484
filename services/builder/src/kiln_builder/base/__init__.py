"""Customising an existing image: where its base comes from (fetch), what it is
(formats: inspected before any tool opens it), and how it is opened (layout)."""
