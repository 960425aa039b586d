"""``python -m gradwise.init``: print the table of :func:`gradwise.init.variance_table`."""

from gradwise.init.propagation import variance_table

print(variance_table())
