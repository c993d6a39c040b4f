"""Machine review (机审): checks every draft before any human sees it.

Pure Python, no I/O but reading the default data in data/. Build a MachineReviewer
from LexiconData (default_lexicons(), or what ops edited) and call check().
"""
from .findings import BLOCKING, SEVERITIES, WARNING, Finding
from .lexicon import LexiconData, default_lexicons
from .reviewer import MachineReviewer

__all__ = ["BLOCKING", "SEVERITIES", "WARNING", "Finding", "LexiconData", "MachineReviewer", "default_lexicons"]
