"""The ``gradwise`` group: commands imported only when they run, one-line errors for all.

A command module imports torch (through the training options' choices), which takes seconds;
:class:`LazyGroup` imports a command's module only when that command is run or its own help is
asked for, so that ``gradwise --help`` and ``gradwise --version`` start at once. The group's own
list of commands shows the one-line help given at registration.
"""

from __future__ import annotations

import importlib
import os

import click

from gradwise.cli.options import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    did_you_mean,
    echo_error,
    usage_error_line,
)


class LazyGroup(click.Group):
    """A click group whose commands are imported when used.

    ``lazy`` maps a command name to ``(module, attribute, short help)``: the command is
    ``module.attribute``, imported by :meth:`get_command`; the short help is what ``--help``
    lists for it. Every usage error, of the group or of a command, is one line
    (:func:`~gradwise.cli.options.usage_error_line`) with exit code 2, and a Ctrl-C that no
    command handled ends with one line and exit code 130.
    """

    def __init__(self, *args, lazy: dict[str, tuple[str, str, str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            module, attribute, _ = self.lazy[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit)))
            else:
                rows.append((name, click.utils.make_default_short_help(self.lazy[name][2], limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            ctx.fail(f"No such command {name!r}{did_you_mean(name, self.list_commands(ctx))}")
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["gradwise.args"] = list(args)  # for the value an error names (invoke)
        try:
            return super().parse_args(ctx, list(args))
        except click.UsageError as e:
            self._one_line(e, args, ctx)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            self._one_line(e, ctx.meta.get("gradwise.args", []), ctx)
        except KeyboardInterrupt:  # e.g. while a command's module was being imported
            click.echo("\ngradwise: interrupted while starting; nothing was written", err=True)
            ctx.exit(EXIT_INTERRUPTED)

    @staticmethod
    def _one_line(e: click.UsageError, args, ctx: click.Context):
        if os.environ.get("GRADWISE_DEBUG"):
            raise e
        echo_error(usage_error_line(e, args, ctx))
        ctx.exit(EXIT_USAGE)
