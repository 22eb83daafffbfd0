"""Transport configuration (QUIC connections, admission, framing, dialing): the largest section,
kept apart from :mod:`.schema`, which re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from .values import KiB, MiB

__all__ = ["TransportConfig"]


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """QUIC connections, admission and framing."""

    max_connections: int = 1000
    """Connections held at once (count). Beyond it new connections are refused with reason
    ``max_connections``. 1,000 as the Erlang mesh's pool, well under quinn's 65,536: ~42 KiB RSS
    each with qh3 here, so ~42 MiB at the cap."""
    max_incoming_handshakes: int = 256
    """Handshakes in progress at once (count). A half-open connection otherwise lives until its
    idle timeout (aioquic has no cap); 256 absorbs a reconnect storm of a few hundred peers."""
    handshake_timeout: float = 10.0
    """Seconds for TLS plus the quicmesh hello/proof exchange before the attempt is dropped. A
    loopback handshake takes ~6-8 ms here (qh3/aioquic); 10 s leaves room for lossy WAN paths and
    their QUIC retransmissions (initial PTO ~1 s, doubling) while bounding half-open state."""
    idle_timeout: float = 30.0
    """Seconds without any packet before QUIC closes the connection (quinn's default)."""
    keepalive_interval: float = 5.0
    """Seconds between pings on an idle connection. Must be shorter than ``idle_timeout``
    (checked); 1/6 of it, so five pings can be lost before the connection times out."""
    max_frame_size: int = 1 * MiB
    """Largest frame accepted (bytes), checked from the length prefix before buffering. 1 MiB as
    NATS' max payload; the Erlang mesh had no cap, so a prefix could ask for 4 GiB. 16 to 2**32-1."""
    send_buffer_bytes: int = 8 * MiB
    """Unsent bytes queued per connection (bytes). QUIC stream writers never pause, so the node
    keeps its own window; past it, best-effort frames are dropped and counted. 8 max frames: a
    burst of large messages fits; 1,000 connections at the cap would be 8 GiB in the worst case,
    which is why the gateway's per-client budget is separate and the sentinel watches RSS."""
    send_stall_timeout: float = 5.0
    """Seconds ``publish`` waits for a congested connection (unsent bytes over half of
    ``send_buffer_bytes``) to drain before moving on; frames beyond the buffer are then dropped
    for that peer and counted. Backpressure for fast publishers, bounded for dead peers."""
    alpn: str = "quicmesh/1"
    """TLS ALPN protocol id; a peer speaking another protocol fails the handshake."""
    # #11 (dial)
    max_pending_dials: int = 8
    """Dials to peers learned from others (discovery walks, shuffles, forward joins, adverts) in
    flight at once (count); more wait in the dial queue. Dials the user asked for (bootstrap,
    ``add_peer``) go first and do not count. In flight plus connected never exceeds
    ``max_connections``. 8: a node joining a mesh dials its 5 active neighbours and a few more."""
    dial_rate: float = 20.0
    """New dials to learned peers per second (token bucket refill); a dial storm (400 ``MFind``
    naming 400 addresses) becomes at most this many handshakes a second."""
    dial_burst: int = 40
    """Token bucket size of ``dial_rate`` (count): dials started at once after a quiet period."""
    max_queued_dials: int = 64
    """Learned dials waiting for a slot or a token (count); beyond it a dial is dropped, counted
    (``dials_dropped``) and reported failed to the machine that asked."""
    dial_queue_wait: float = 5.0
    """Seconds a learned dial may wait in the queue before it is dropped as failed (half the
    mesh's dial timeout)."""
    max_handshakes_per_source: int = 32
    """Incoming handshakes in progress at once from one source IP address (count); more are
    refused at the first packet (``max_handshakes_per_source``). A loopback handshake takes
    ~10 ms, so 32 still admits thousands a second from one host (clients behind one NAT), while
    one host can no longer hold all ``max_incoming_handshakes`` slots."""
    retry_threshold: int = 64
    """Incoming handshakes in progress (count) above which new ones must first prove their
    source address with a QUIC Retry (a spoofed source never sees the token and holds no
    slot); 0: always send a Retry. It costs new dialers one round trip while it is on."""
    # #11 (wire)
    max_preauth_buffer: int = 64 * KiB
    """Bytes of partial frame a connection may buffer before its handshake completes (default
    64 KiB; handshake messages are a few hundred bytes). Beyond it the attempt is closed with code
    ``protocol``: an unauthenticated dialer cannot make us hold a 1 MiB frame."""
    max_peer_offences: int = 3
    """Messages from one connection whose handling may raise before the connection is closed with
    code ``protocol`` (default 3). Each such message is dropped and counted (``inbox_errors_total``)."""
    inbox_peer_share_min: int = 256
    """Smallest share of the node's inbox (messages) one peer may fill before its connection stops
    reading until half of it is processed (default 256, one processing chunk). The share is
    ``max(this, inbox capacity // connected peers)``, so one peer's tiny frames never crowd out
    the others'."""
    max_paused_bytes: int = 16 * MiB
    """Bytes a paused connection (over its inbox share) may hold unread (default 16 MiB, 16 max
    frames). QUIC keeps granting the peer flow-control credit, so a peer that keeps sending this
    much while paused is closed with code ``slow_consumer`` instead of being buffered without end."""
    # #14 (udp batching)
    batched_udp: bool = True
    """Move datagrams in batches (Linux): several per ``recvmmsg``, coalesced receives (UDP GRO)
    and one ``sendmsg`` per run of equal-sized datagrams to one address (UDP GSO,
    ``UDP_SEGMENT``), through qh3's optimized datagram transport; each run of received packets
    for one connection is handed to QUIC at once and answered by one transmit. ``false``: one
    datagram per system call (asyncio's own transport). Where the kernel or path refuses GSO it
    is turned off by itself."""
    ack_delay: float = 0.0005
    """Seconds an open connection waits at least, after a lone datagram arrived, before it sends
    what QUIC owes the peer for it (the acknowledgement, a flow-control update) on its own
    (default 0.5 ms; 0: at once, every time). QUIC (qh3) itself holds an acknowledgement back
    1 ms and writes it into the first packet it sends after that, so back-to-back round trips cost
    each end one datagram and one wake-up instead of 1.5 (QUIC acknowledges every second packet
    at once): ~5 % faster on loopback (#14); the ACK goes alone when nothing else went by the
    later of the two delays. Runs of datagrams (bulk transfer) and handshakes are acknowledged at
    once. At most 10 ms, well under the 25 ms maximum acknowledgement delay the peer assumes."""
    flush_bytes: int = 4 * KiB
    """Bytes of frames queued for one connection (default 4 KiB) at which they are written to
    QUIC at once, in the middle of the loop iteration that produced them (once per iteration;
    the rest leaves together at its end, as before; 0: everything at the end). 64 calls issued
    in one iteration then leave in two writes, so the provider starts on the first half while
    the caller still frames the second: RPC with 64 in flight ~1.7x the calls a second between
    two node processes (#14)."""
    max_datagram_size: int = 16384
    """Largest UDP payload (bytes) between nodes on this host (default 16 KiB; at most what the
    loopback interface's MTU allows, 65,487 at its usual 65,536). Both ends use it from the first
    packet on a loopback address (a dialer advertises it as its ``max_udp_payload_size``), so 1 KiB
    messages travel in ~12 times fewer packets: ~1.6x the messages per second between two node
    processes. The cost is on fresh connections: the first congestion window is two datagrams
    when they are large (RFC 9002) and qh3 paces sends by it, ~1 ms more per round trip until
    ~10 datagrams' worth has been acknowledged (light clients keep the usual sizes for that
    reason). Other direct paths keep QUIC's usual sizes (a dialer probes up to 1,472 bytes, a
    listener sends 1,280): qh3's path MTU search above 1,472 is not used, as it was measured to
    take sizes the path does not carry (65,527 bytes after one 1,836-byte probe on a path of MTU
    9000, and the connection stalled). 1,280 keeps the usual sizes on loopback too."""
