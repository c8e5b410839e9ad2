"""Model components: one module per family; each variant registers next to its definition."""
