"""What both forms of the project's writer lock share (the file lock in `project_lock`, the PostgreSQL
advisory lock in `database_lock`): the error a waiting writer gets, the token an exclusive holder hands to
the processes it starts, and how often a waiter looks again. Kept apart so neither lock imports the other
for it."""

from __future__ import annotations

LOCK_TOKEN_ENV = "LOCDIFF_LOCK_TOKEN"
POLL_SECONDS = 0.5


class ProjectLocked(RuntimeError):
    """Another process is writing this project folder."""
