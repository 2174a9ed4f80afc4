"""LMTCNN on one device: Adience preparation, the two networks, a trainer and evaluation.

A plain library: it never imports Ray, rich or the scheduler, so a Ray task, a test and
the command line (`python -m lmtcnn`) all call the same functions.
"""

__version__ = "0.1.0"
