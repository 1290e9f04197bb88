"""Real photos: face detection and alignment, embedding photos, galleries (1:N identification), clustering."""
