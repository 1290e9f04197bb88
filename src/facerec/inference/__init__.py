"""Trained models at inference time: the model objects, the one loader, ONNX, ensembles and export."""
