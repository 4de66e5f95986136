"""Coordination between writers: the project's readers-writer lock (a file lock on one machine, a
PostgreSQL advisory lock for a team's stack) and whether the process that started a run is still alive.
Imports nothing else of the project."""
