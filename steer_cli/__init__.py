"""The ``steer`` command line: the top layer, above ``flows/`` (see docs/architecture.md).

``steer_cli.main`` builds the parser; each sub-command is a module of ``steer_cli.commands``.
"""
