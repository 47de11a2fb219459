"""Schedules that run the stages of one image (read -> normalise -> network -> objects -> write) side by side."""
