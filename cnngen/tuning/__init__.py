"""Auto-tuning: a schedule space per kernel, searched, measured safely, remembered in SQLite.

- the space of a kernel: ``codegen.cpu.SPACE[op](lowering)`` (built on schedule.py's
  ``conv_space``, ``depthwise_space``, ``dense_space`` and Winograd's ``space``).
- ``workload``: what a record is about, and records applied when a net is compiled.
- ``search``: grid, random and evolutionary search within a trial and time budget.
- ``measure``: candidates compiled and timed in worker processes, checked first.
- ``db``: the SQLite database of measured trials and the best record per workload.
- ``tuner``: all of it over a network's kernels (``cnngen.tune``, ``cnngen tune``), and over
  a training step's weight gradients (``tune_training``, ``cnngen tune --training``: spaces in
  ``codegen.cpu.GRAD_SPACE``, candidates measured by ``train_measure``).
"""
