"""Reading studies and writing outputs (atomic, geometry-exact)."""
