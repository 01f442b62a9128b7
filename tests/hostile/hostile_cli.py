"""The CLI as the hostile tests run it: in process, where an error must be one line and never a traceback."""

from click.testing import CliRunner

from pixdeploy.cli import main

# A training run as short as a test can make it.
QUICK = ["--steps", "2", "--batch-size", "2", "--workers", "0", "--warmup", "1", "--vocab-size", "32",
         "--eval-percent", "0"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result
