"""Ray's own console noise stays out of the user's console where Ray allows it (``msg_ray.cli.quiet_ray``): the
"token authentication is enabled" notice is dropped (the "disabled" warning is not), and every Ray worker of a
``msg-ray`` process knows its own cluster's address, so Ray Train's PlacementGroupCleaner does not die with a
"Found multiple active Ray instances" traceback when two local Ray instances run on one machine."""

from __future__ import annotations

import logging
import os

import pytest

from msg_ray import cli


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def hook_unset(monkeypatch):
    monkeypatch.delenv(cli.RUNTIME_ENV_HOOK, raising=False)  # restored (removed) after the test


def test_main_quiets_ray_before_any_command_runs(hook_unset, tmp_path, capsys):
    assert cli.main(["sync", "nothing", "--storage-path", str(tmp_path)]) == 2  # fails fast, no Ray
    assert os.environ[cli.RUNTIME_ENV_HOOK] == "msg_ray.cli.ray_runtime_env"
    assert logging.getLogger(cli._TOKEN_LOGGER).filters.count(cli._TOKEN_FILTER) == 1
    assert "no tracking spool" in capsys.readouterr().err


def test_token_auth_notice_is_dropped_and_the_disabled_warning_kept(hook_unset):
    from ray._private.authentication import authentication_token_setup as auth

    cli.quiet_ray()
    cli.quiet_ray()  # idempotent: one filter
    records = _Records()
    logger = logging.getLogger(auth.__name__)
    logger.addHandler(records)
    try:
        auth._warn_token_auth_enabled()  # what ray.init logs when it starts a local cluster
        auth._warn_token_auth_disabled()
    finally:
        logger.removeHandler(records)
    assert len(records.messages) == 1 and records.messages[0].startswith("Token authentication is disabled")


def test_runtime_env_hook_gives_each_worker_its_own_cluster_address(hook_unset, ray_local):
    from ray._common.utils import load_class

    cli.quiet_ray()
    hook = load_class(os.environ[cli.RUNTIME_ENV_HOOK])  # what ray.init does with RAY_RUNTIME_ENV_HOOK
    env = hook({"env_vars": {"A": "1"}})
    assert env["env_vars"] == {"A": "1"} and callable(env["worker_process_setup_hook"])
    assert hook({"worker_process_setup_hook": "theirs.setup"})["worker_process_setup_hook"] == "theirs.setup"

    @ray_local.remote(num_cpus=0)
    def run_in_worker(setup) -> str:
        os.environ.pop("RAY_ADDRESS", None)
        setup()
        return os.environ["RAY_ADDRESS"]

    address = ray_local.get(run_in_worker.remote(env["worker_process_setup_hook"]))
    assert address == ray_local.get_runtime_context().gcs_address
