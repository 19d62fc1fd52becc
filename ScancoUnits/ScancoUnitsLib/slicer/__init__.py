"""Scene-facing code (MRML nodes, charts, mask export); Slicer and VTK imported inside functions only."""
