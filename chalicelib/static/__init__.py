"""Static pages served by the API (kept as Python strings so `chalice package`
ships them with chalicelib)."""
