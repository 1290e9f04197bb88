"""Evaluation metrics: closed-set top-k accuracy (`classification`) and open-set pair verification
(`verification`). Import from the submodules; this package imports nothing, so loading it stays cheap.
"""
