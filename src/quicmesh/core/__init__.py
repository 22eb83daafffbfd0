"""The sans-IO core: protocol state machines that take events with ``now`` and return effects.

Nothing in this package may import asyncio, socket, a QUIC library, ``time`` or the global
``random`` module (``tests/test_layering.py`` enforces it): time and a seeded ``random.Random``
are arguments.
"""
