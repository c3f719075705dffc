"""Supervisors (DS-VLM diffusion supervision) register here."""
