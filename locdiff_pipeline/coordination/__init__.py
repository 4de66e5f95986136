"""Coordination between writers: the project's readers-writer lock (a file lock on one machine, a
PostgreSQL advisory lock for a team's stack), whether the process that started a run is still alive, and the
identity one end of a team's dask link presents. Imports nothing else of the project."""
