"""Product search (placeholder until the term index lands)."""


def index_products(cur, rows):
    """Maintain the search index for `rows` inside the caller's transaction."""
