"""Tests of the webhook gateway."""
