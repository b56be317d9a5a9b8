"""Tests of ``chunkstore serve`` (the distribution API's pull side)."""
