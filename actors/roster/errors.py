"""Why a roster file cannot be imported at all."""

from __future__ import annotations

from jobplatform.errors import JobError


class RosterRejected(JobError):
    """The file as a whole cannot be imported; the message says why, for the person who sent it."""
