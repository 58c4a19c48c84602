"""Experiment commands of the paper (Table 1, 3, Fig. 6, 8, 9): `python -m rald_fast.experiments`."""
