"""Training inputs: the ``ClipSource`` interface the trainer reads, and the data sets behind it.

``source.py`` defines the interface and the host-sharding helper; ``demo.py`` is a built-in
procedural data set (no download) for smoke runs and tests. The real data sets implement the
same interface.
"""
