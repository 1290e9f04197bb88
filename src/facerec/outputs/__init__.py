"""What a run hands in and reports: the Kaggle submission files and the write-up with its plots."""
