"""Operator tasks on a whole installation: backup, restore, id floors, support bundle.

These work on the database file as a whole (online snapshot, integrity check, the
sequences of every AUTOINCREMENT table, row counts), so their SQL is about SQLite
itself, not about any one store's tables.
"""
