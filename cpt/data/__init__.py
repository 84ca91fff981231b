"""Data: token sources (cpt.data.text) and the batch loader (cpt.data.loader)."""
