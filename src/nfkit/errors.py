"""The root of nfkit's exception tree.

Every exception nfkit raises on purpose derives from :class:`NfkitError`::

    NfkitError
    ├── nfkit.netlink.NetlinkError (also OSError; errno-specific subclasses)
    │   └── nfkit.netlink.BufferOverrun     the kernel dropped messages (ENOBUFS)
    ├── nfkit.netlink.DecodeError (also ValueError)
    │   └── nfkit.netlink.TruncatedError
    ├── nfkit.netlink.EncodeError (also ValueError)
    └── nfkit.logd.ConfigError              a configuration problem, with file:line
"""


class NfkitError(Exception):
    """Base class of every error raised by nfkit."""
