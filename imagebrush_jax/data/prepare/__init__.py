"""Readers of published edit data sets, for building training shards: InstructPix2Pix pairs
grouped by instruction (ip2p.py) and frame pairs from clips and DAVIS frame folders (video.py)."""
