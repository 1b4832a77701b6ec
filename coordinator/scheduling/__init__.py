"""Scheduled checks: slots, budget forecast, archive, alerts."""
