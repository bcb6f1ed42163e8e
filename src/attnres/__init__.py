"""attnres: attention modules for convolutional networks, placed anywhere in ResNets."""

__version__ = "0.1.0"
