"""Scripted demonstrators with privileged simulator state."""
