"""Adversarial tests of issue #11 (trust): hostile peers and clients against real nodes."""
