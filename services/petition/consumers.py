"""Event consumers of the petition service: the account service's units feed the directory
(unit → region path and name) used for assignment and for the reach of supervisors; its
accounts tell which unit may import the comments left on each; its calendar years (ops'
State Council notices) count the deadlines, and a changed year has them counted again."""
from __future__ import annotations

from . import imports
from .models import calendar_book, directory

CONSUMERS = [directory.consumer("petition"), calendar_book.consumer("petition"), *imports.CONSUMERS]
