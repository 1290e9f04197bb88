"""Scoring trained models: dataset splits and pair files, the LFW protocol, folders of people, calibration."""
