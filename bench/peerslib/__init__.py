"""Helpers of bench/peers.py: adapters per system, the worker process, sessions, the report."""
