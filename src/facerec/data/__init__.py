"""Data input: identity-folder scanning, image decoding, HW2P2 layouts and verification pair files."""
