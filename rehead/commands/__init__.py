"""CLI commands beyond the core, one module per area; each adds itself to ``rehead.cli.app``."""
