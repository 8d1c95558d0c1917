"""Outbound network access: the SSRF guard every outbound HTTP request goes through."""
