"""One conversion: the request, the single-pass engine and its kernels, observers and sinks."""
