"""Automations that cannot hurt: auto-replies, scheduled messages, and the worker's side
of scripts (triggers, the host API, runs), all sending through ``messaging.sends``."""
