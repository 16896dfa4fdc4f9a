"""Auto-tuning: a schedule space per kernel, searched, measured safely, remembered in SQLite.

- ``space``: the legal schedules of a kernel on a target (schedule.py holds the kinds).
- ``search``: grid, random and evolutionary search within a trial and time budget.
- ``measure``: candidates compiled and timed in worker processes, checked first.
- ``db``: the SQLite database of measured trials and the best record per workload.
- ``tuner``: all of it over a network's kernels (``cnngen.tune``, ``cnngen tune``).
"""
