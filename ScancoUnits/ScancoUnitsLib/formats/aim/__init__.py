"""The AIM format: header and log, compressed voxel streams, the writer."""
