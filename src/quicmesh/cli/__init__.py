"""The ``quicmesh`` command line.

``quicmesh keygen PATH``                     write a new Ed25519 node key (mode 0600)
``quicmesh node --listen HOST:PORT ...``      run a node until SIGINT/SIGTERM
``quicmesh call --node HOST:PORT NAME DATA``  call a procedure through a short-lived node
``quicmesh pub --node HOST:PORT TOPIC DATA``  publish through a short-lived node
``quicmesh sub --node HOST:PORT TOPIC``       print a topic's messages through a short-lived node
``quicmesh call|pub|sub --connect HOST:PORT``  the same as a light client of a gateway node
``quicmesh status --http HOST:PORT``          show a running node's health as tables
``quicmesh demo``                             three local node processes exchange messages and a call

Errors are printed as one line (``error: Type: message``) with a non-zero exit status.

Modules: :mod:`.main` (arguments and dispatch), :mod:`.node` (``keygen``, ``node``),
:mod:`.client` (``call``/``pub``/``sub``), :mod:`.status` (``status``: /health as rich tables).
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
