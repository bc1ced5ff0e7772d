"""nfkit: the Netfilter userspace toolbox."""

__version__ = "0.1.0"
