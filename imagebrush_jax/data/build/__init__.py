"""Readers of published edit data sets, for building training shards: InstructPix2Pix (ip2p.py)."""
