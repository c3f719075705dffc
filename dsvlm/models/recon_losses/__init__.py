"""Reconstruction losses register here."""
