"""Companion training module (VILA 3-stage recipe). Not built yet: see issue 3."""
