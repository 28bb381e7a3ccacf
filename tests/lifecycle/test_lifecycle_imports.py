"""boto3 stays at the edge: everything but ``aws`` imports without it, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_BOTO = "import sys\nsys.modules['boto3'] = None\nsys.modules['botocore'] = None\n"


def run_without_boto(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_BOTO + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_module_but_aws_imports_without_boto3() -> None:
    result = run_without_boto(
        """
        import fluidity.lifecycle.decisions
        import fluidity.lifecycle.scaling
        import fluidity.lifecycle.operations
        import fluidity.lifecycle.handlers
        import fluidity.lifecycle.cloudwatch
        import fluidity.lifecycle.client
        import fluidity.lifecycle.cli
        assert "fluidity.lifecycle.aws" not in sys.modules
        try:
            import fluidity.lifecycle.aws
        except ImportError:
            print("aws needs boto3")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "aws needs boto3\n"


def test_the_publisher_without_boto3_is_a_config_error_naming_the_extra() -> None:
    result = run_without_boto(
        """
        import asyncio
        from fluidity.errors import ConfigError
        from fluidity.lifecycle.cloudwatch import Activity, CloudWatchConfig, MetricsPublisher

        publisher = MetricsPublisher(CloudWatchConfig("fluidity-server", method="api"))
        try:
            asyncio.run(publisher.run(lambda: Activity(0, 0, 0.0)))
        except ConfigError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "boto3 is not installed; install 'fluidity[aws]'" in result.stdout


def test_the_lambda_handlers_need_nothing_but_the_standard_library_and_boto3() -> None:
    # the Lambda zip is built with --no-deps: h2, h11, cryptography, PyYAML are not in it
    result = run_without_boto(
        """
        import fluidity.lifecycle.handlers
        heavy = {"h2", "h11", "hpack", "cryptography", "yaml", "uvloop"}
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_the_client_without_botocore_is_a_config_error_naming_the_extra() -> None:
    result = run_without_boto(
        """
        import asyncio
        from fluidity.errors import ConfigError
        from fluidity.lifecycle.client import ControlPlaneClient, LifecycleConfig

        client = ControlPlaneClient(LifecycleConfig("http://127.0.0.1:9/", "http://127.0.0.1:9/"))
        try:
            asyncio.run(client.query())
        except ConfigError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "needs botocore to sign its calls; install 'fluidity[aws]'" in result.stdout
