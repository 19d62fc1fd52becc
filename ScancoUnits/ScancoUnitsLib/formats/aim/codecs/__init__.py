"""The AIM compressed-voxel codecs, one module per kind (binCmp, charCmp, bit8) over shared helpers.

Callers import from :mod:`..compression`, the front that re-exports the public names; these modules
hold the decoders' inner loops and the encoders.
"""
