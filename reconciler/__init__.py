"""Webhooks as code: load ``webhooks.d/``, validate it, and build the routing table. Never does HTTP."""
