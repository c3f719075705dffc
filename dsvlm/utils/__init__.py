"""Small helpers shared by tools and hooks."""
