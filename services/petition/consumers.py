"""Event consumers of the petition service: the account service's units feed the directory
(unit → region path and name) used for assignment and for the reach of supervisors."""
from __future__ import annotations

from .models import directory

CONSUMERS = [directory.consumer("petition")]
