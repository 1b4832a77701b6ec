"""Pieces both the node and the coordinator use: DP mechanisms, wire conversion, ring crypto."""
