"""Event consumers of the petition service: the account service's units feed the directory
(unit → region path and name) used for assignment and for the reach of supervisors; its
accounts tell which unit may import the comments left on each."""
from __future__ import annotations

from . import imports
from .models import directory

CONSUMERS = [directory.consumer("petition"), *imports.CONSUMERS]
