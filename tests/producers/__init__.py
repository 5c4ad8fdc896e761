"""Tests of the producers: webhook gateway and crawler."""
