"""The FUSE filesystem: pyfuse3 Operations over a store, its caches and local staging."""
