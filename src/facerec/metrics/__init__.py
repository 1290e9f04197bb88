"""Evaluation metrics: closed-set top-k accuracy (`classification`), how embeddings are compared (`scoring`:
cosine or euclidean scores, the accept rule, distances, FAISS indexes), open-set pair verification
(`verification`), and how far its figures would move on other pairs like these (`bootstrap`). Import from the
submodules; this package imports nothing, so loading it stays cheap.
"""
