"""The lab's commands: ``gradwise lr-find``, ``gradwise compare``, ``gradwise schedule``."""

COMMANDS: list = []
