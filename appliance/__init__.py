"""WhatsApp gateway appliance."""

__version__ = "0.1.0"
