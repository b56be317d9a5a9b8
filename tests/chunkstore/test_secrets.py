"""No secret from the environment is printed by an object that carries it, or by a traceback
rendered with its local variables (Python's capture_locals, rich's show_locals)."""

from __future__ import annotations

import io
import pickle
import traceback

import pytest
from rich.console import Console
from rich.pretty import pretty_repr
from rich.traceback import Traceback

from chunkstore.backends import RemoteOptions, open_backend
from chunkstore.environment import Environment
from chunkstore.errors import UsageError

SECRETS = {
    "CHUNKSTORE_PASSWORD": "repo-pw-7f3a9c",
    "CHUNKSTORE_TO_PASSWORD": "to-pw-51be02",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-9d1e44",
}
# A registry user without its password: opening the backend fails inside credentials_for,
# several frames below the options object, with the environment among the locals.
ENV = {**SECRETS, "CHUNKSTORE_REGISTRY_USER": "alice", "HOME": "/home/alice"}


def leaks(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


def test_options_and_environment_never_print_values() -> None:
    for opts in (RemoteOptions(env=ENV), RemoteOptions(env=Environment(ENV), plain_http=True)):
        assert isinstance(opts.env, Environment)
        for text in (repr(opts), str(opts), repr(opts.env), str(opts.env), f"{opts!r} {opts}"):
            assert leaks(text) == [], text
        assert (
            leaks(pretty_repr(opts)) == [] and leaks(pretty_repr({"o": opts, "e": opts.env})) == []
        )
    env = Environment(ENV)
    assert env["CHUNKSTORE_PASSWORD"] == SECRETS["CHUNKSTORE_PASSWORD"]  # still usable
    assert dict(env) == ENV and len(env) == len(ENV)
    assert pickle.loads(pickle.dumps(env)) == env
    with pytest.raises(KeyError, match="NOT_SET") as err:
        env["NOT_SET"]
    assert leaks(str(err.value)) == []


def failure() -> BaseException:
    remote = RemoteOptions(env=ENV)
    with pytest.raises(UsageError, match="CHUNKSTORE_REGISTRY_PASSWORD") as err:
        open_backend("registry:registry.example/repo", remote)
    return err.value


def test_traceback_locals_show_no_secret() -> None:
    exc = failure()
    rendered = "".join(
        traceback.TracebackException.from_exception(exc, capture_locals=True).format()
    )
    assert "credentials_for" in rendered and "    env = " in rendered  # the frames are there
    assert leaks(rendered) == [], rendered

    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(
        Traceback.from_exception(type(exc), exc, exc.__traceback__, show_locals=True)
    )
    assert "credentials_for" in out.getvalue()
    assert leaks(out.getvalue()) == [], out.getvalue()
