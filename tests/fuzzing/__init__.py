"""A seeded fuzzer for every file and upload a user can hand facerec (issue #17).

`mutate` turns a valid file into a broken one (bit flips, overwrites, truncations, insertions, deletions, another
format's header, an empty file; inside zip archives, JSON and checkpoints too), reproducibly from a seed.
`targets` holds, per input type, valid seed files and the public entry point with its accepted outcomes (a
result, or facerec's own error). `runner` runs each case in a separate worker process with a time limit, so a
hang or a crash is reported with its seed instead of stopping the run.

Used by tests/test_fuzz.py (about 50 cases per type) and bench/fuzz.py (1,000 or more).
"""
