"""Independent tar readers the tests compare chunkstore's reader against: GNU tar and Go's
``archive/tar`` (the reader docker and containerd unpack layers with)."""
