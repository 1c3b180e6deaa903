"""The version of shardstore (written into every manifest it commits)."""

__version__ = "0.1.0"
