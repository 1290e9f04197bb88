"""Evaluation metrics: closed-set top-k accuracy (`classification`), how embeddings are compared (`scoring`:
cosine or euclidean scores, the accept rule, distances, FAISS indexes) and open-set pair verification
(`verification`). Import from the submodules; this package imports nothing, so loading it stays cheap.
"""
