"""The `pixdeploy` command line. Every user error is one line on stderr and a non-zero exit.

One module per stage registers its commands on `main`; this module holds the group, its error
handling and the helpers the stages share."""

# The stages register their commands on `main` when imported.
from pixdeploy.cli import bench, engine, export, inspect, quantize, run, serve, train  # noqa: E402, F401
from pixdeploy.cli.app import (  # noqa: F401 -- the names commands and tests import from pixdeploy.cli
    EXTRAS,
    FiniteFloat,
    Group,
    PathArg,
    echo_line,
    image_list,
    interrupted,
    main,
    parse_overrides,
    printable,
    say,
    say_lines,
)
