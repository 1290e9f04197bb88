"""Backbones (registered CNN trunks) and the embedding network built on them."""
