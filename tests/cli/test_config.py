"""Config: every key validated, every problem reported at once, naming file and key."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hub.config import load_settings, settings_from_dict
from hub.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"
DUMMY_ENV = {
    "HUB_MATRIX_PASSWORD": "dummy-matrix-pw",
    "HUB_SMTP_PASSWORD": "dummy-smtp-pw",
    "HUB_SECRET": "dummy-web-secret",
}

MINIMAL = """
[matrix]
homeserver = "https://matrix.example.org"
user_id = "@hub:example.org"
password = "${HUB_MATRIX_PASSWORD}"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), env=DUMMY_ENV if env is None else env)
    return info.value.problems


def test_example_config_passes_with_dummy_env() -> None:
    s = load_settings(EXAMPLE, env=DUMMY_ENV)
    assert s.matrix.password == "dummy-matrix-pw"
    assert s.email.password == "dummy-smtp-pw" and s.email.enabled
    assert s.web.secret == "dummy-web-secret" and s.web.port == 8080
    assert s.cohorts[0].slug == "winter-2027"
    assert s.cohorts[0].timezone == ZoneInfo("Europe/Berlin")
    assert str(s.cohorts[0].digest) == "mon 09:00"
    assert s.cohorts[0].webinar is not None and s.cohorts[0].webinar.title == "Kick-off"
    assert s.email.inbound is not None and s.email.inbound.domain == "hub.example.org"
    inbound = s.email.inbound
    assert (inbound.host, inbound.port, inbound.max_size_kb) == ("127.0.0.1", 2525, 1024)
    # Secrets are collected for the log filter.
    assert {"dummy-matrix-pw", "dummy-smtp-pw", "dummy-web-secret"} <= s.secrets


def test_relative_paths_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, MINIMAL), env=DUMMY_ENV)
    assert s.hub.data_dir == tmp_path / "data"
    assert s.database.url == f"sqlite:///{(tmp_path / 'data' / 'hub.db').resolve()}"
    assert s.content.path is None  # the shipped library


def test_misspelt_key_is_named_with_the_file(tmp_path: Path) -> None:
    problems = _problems(tmp_path, MINIMAL + 'comand_prefix = "!x"\n')
    assert any("matrix.comand_prefix: unknown key" in p and "config.toml" in p for p in problems)


def test_unset_variable_is_named(tmp_path: Path) -> None:
    problems = _problems(tmp_path, MINIMAL.replace("${HUB_MATRIX_PASSWORD}", "${UNSET_THING}"))
    assert any("matrix.password" in p and "UNSET_THING is not set" in p for p in problems)


def test_all_problems_are_collected(tmp_path: Path) -> None:
    text = MINIMAL + """
[hub]
timezone = "Mars/Olympus"
catch_up_hours = "twelve"
[web]
listen = "nowhere"
[email]
enabled = true
security = "ssl"
[[cohort]]
slug = "Bad Slug"
digest = "someday 25:00"
weeks = true
checkin_weeks = [0, 99]
webinar = { at = "tomorrow", title = "x" }
"""
    problems = _problems(tmp_path, text)
    joined = "\n".join(problems)
    for expected in (
        "hub.timezone", "hub.catch_up_hours", "web.listen", "email.from: is required",
        "email.security", "cohort[0].slug", "cohort[0].digest", "cohort[0].weeks",
        "cohort[0].checkin_weeks", "cohort[0].webinar.at",
    ):
        assert expected in joined, f"{expected} not reported in:\n{joined}"
    assert len(problems) >= 10


def test_default_checkin_and_reflection_weeks_fit_a_short_cohort(tmp_path: Path) -> None:
    # The defaults (check-ins 1, 2, 4, 8; reflections 3, 6, 9) are for 12 weeks: a 4-week
    # cohort keeps those that fit instead of failing `hub check` over weeks nobody wrote.
    s = load_settings(_write(tmp_path, MINIMAL + '[[cohort]]\nslug = "short"\nweeks = 4\n'), env=DUMMY_ENV)
    assert s.cohorts[0].checkin_weeks == (1, 2, 4) and s.cohorts[0].reflection_weeks == (3,)
    s = load_settings(_write(tmp_path, MINIMAL + '[[cohort]]\nslug = "one"\nweeks = 1\n'), env=DUMMY_ENV)
    assert s.cohorts[0].checkin_weeks == (1,) and s.cohorts[0].reflection_weeks == ()
    # Weeks someone did write stay errors when the cohort is too short for them.
    problems = _problems(tmp_path, MINIMAL + '[[cohort]]\nslug = "short"\nweeks = 4\n'
                                             "checkin_weeks = [1, 5]\nreflection_weeks = [9]\n")
    assert problems == [
        f"{tmp_path / 'config.toml'}: cohort[0].checkin_weeks: 5 is not a week number between 1 and 4",
        f"{tmp_path / 'config.toml'}: cohort[0].reflection_weeks: 9 is not a week number between 1 and 4",
    ]


def test_required_matrix_keys(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "[hub]\n")
    joined = "\n".join(problems)
    assert "matrix.homeserver: is required" in joined
    assert "matrix.user_id: is required" in joined
    assert "matrix.password: is required (or set access_token)" in joined


def test_unknown_section_and_bad_toml(tmp_path: Path) -> None:
    assert any("matirx: unknown section" in p for p in _problems(tmp_path, MINIMAL + "[matirx]\n"))
    assert any("not valid TOML" in p for p in _problems(tmp_path, "[matrix\n"))


def test_bad_urls_and_ids(tmp_path: Path) -> None:
    text = MINIMAL.replace("https://matrix.example.org", "matrix.example.org").replace(
        "@hub:example.org", "hub"
    ) + 'moderators = ["lead"]\n'
    joined = "\n".join(_problems(tmp_path, text))
    assert "matrix.homeserver" in joined and "matrix.user_id" in joined
    assert "matrix.moderators[0]" in joined


def test_defaults_when_sections_are_omitted() -> None:
    s = settings_from_dict(
        {"matrix": {"homeserver": "http://x", "user_id": "@a:x", "access_token": "tok-123"}},
        base=Path("/srv/hub"), env={},
    )
    assert s.matrix.command_prefix == "!hub"
    assert s.matrix.control_room == "#hub-moderators:x"
    assert s.hub.catch_up_hours == 12 and s.email.enabled is False
    assert s.video.base_url == "https://meet.jit.si"


def _hub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli_check_offline_exit_codes(tmp_path: Path) -> None:
    ok = _hub("check", "--offline", "-c", str(EXAMPLE), env=DUMMY_ENV)
    assert ok.returncode == 0, ok.stderr
    bad = _write(tmp_path, MINIMAL + 'encrypt_pair_room = true\n')
    result = _hub("check", "--offline", "-c", str(bad), env=DUMMY_ENV)
    assert result.returncode == 1
    assert "matrix.encrypt_pair_room: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    unset = _hub("check", "--offline", "-c", str(EXAMPLE), env={"HUB_SECRET": "x" * 8})
    assert unset.returncode == 1 and "HUB_MATRIX_PASSWORD is not set" in unset.stderr
    assert _hub("frobnicate").returncode == 2
    version = _hub("--version")
    assert version.returncode == 0 and "cohort-hub" in version.stdout


def test_config_from_env_var_path(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    result = _hub("check", "--offline", env={**DUMMY_ENV, "HUB_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    missing = _hub("check", "--offline", env={"HUB_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.returncode == 1 and "cannot read config" in missing.stderr


def test_example_copied_into_an_empty_folder_passes_check_offline(tmp_path: Path) -> None:
    """Issue 16 item 3: the example set content.path to a folder next to it, which a copy lacks."""
    config = tmp_path / "config.toml"
    shutil.copyfile(EXAMPLE, config)
    result = _hub("check", "--offline", "-c", str(config), env=DUMMY_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"{config}: OK"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # the check made nothing
    assert load_settings(config, env=DUMMY_ENV).content.path is None  # the shipped library


def test_type_errors_read_as_english(tmp_path: Path) -> None:
    text = MINIMAL + """command_prefix = 5
encrypt_pair_rooms = "yes"
[hub]
catch_up_hours = "twelve"
[email]
max_per_second = "fast"
connections = 2.5
[[cohort]]
slug = "c"
weeks = true
"""
    where = tmp_path / "config.toml"
    assert _problems(tmp_path, text) == [
        f"{where}: hub.catch_up_hours: must be an integer, not text",
        f"{where}: matrix.command_prefix: must be text, not an integer",
        f"{where}: matrix.encrypt_pair_rooms: must be true or false, not text",
        f"{where}: email.connections: must be an integer, not a number",
        f"{where}: email.max_per_second: must be a number, not text",
        f"{where}: cohort[0].weeks: must be an integer, not true",
    ]


def test_unknown_keys_get_a_suggestion(tmp_path: Path) -> None:
    text = MINIMAL + 'comand_prefix = "!x"\nzzz = 1\n[matirx]\n[[cohort]]\nslug = "c"\ndigets = "mon 09:00"\n'
    where = tmp_path / "config.toml"
    assert sorted(_problems(tmp_path, text)) == sorted([
        f"{where}: matirx: unknown section (did you mean 'matrix'?)",
        f"{where}: matrix.comand_prefix: unknown key (did you mean 'command_prefix'?)",
        f"{where}: matrix.zzz: unknown key",  # nothing close: no guess
        f"{where}: cohort[0].digets: unknown key (did you mean 'digest'?)",
    ])


def test_a_missing_variable_is_the_only_problem_it_causes(tmp_path: Path) -> None:
    text = MINIMAL.replace("${HUB_MATRIX_PASSWORD}", "${UNSET_THING}") + "reset_cross_signing = true\n"
    assert _problems(tmp_path, text) == [
        f"{tmp_path / 'config.toml'}: matrix.password: environment variable UNSET_THING is not set"]
    # An empty value that is really empty is still named.
    assert _problems(tmp_path, MINIMAL.replace("${HUB_MATRIX_PASSWORD}", "")) == [
        f"{tmp_path / 'config.toml'}: matrix.password: password or access_token must not be empty"]


@pytest.mark.parametrize("sender", ['""Bcc: victim@example.org" <hub@example.org', "hub at example.org",
                                    "Hub <>", "Hub <hub@example.org> extra"])
def test_email_from_must_be_one_address_as_written(tmp_path: Path, sender: str) -> None:
    data = {"matrix": {"homeserver": "https://m.example.org", "user_id": "@hub:example.org",
                       "access_token": "t"},
            "email": {"enabled": True, "from": sender}}
    with pytest.raises(ConfigError, match=r"email\.from: .* is not an email address"):
        settings_from_dict(data, base=tmp_path, env={})


_EMAIL = '\n[email]\nenabled = true\nfrom = "Hub <hub@example.org>"\n'


def test_no_inbound_table_means_no_listener(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, MINIMAL + _EMAIL), env=DUMMY_ENV).email.inbound is None


def test_inbound_values_are_checked_with_clear_messages(tmp_path: Path) -> None:
    problems = _problems(tmp_path, MINIMAL + _EMAIL + '[email.inbound]\nlisten = "localhost"\n'
                         'domain = "not a domain"\nmax_size_kb = 2\nsize = 3\n')
    text = "\n".join(problems)
    assert "email.inbound.listen: 'localhost' is not HOST:PORT" in text
    assert "email.inbound.domain: 'not a domain' is not a domain name" in text
    assert "email.inbound.max_size_kb: must be between 16 and 102400" in text
    assert "email.inbound.size: unknown key" in text
    assert any("email.inbound.domain: is required" in p
               for p in _problems(tmp_path, MINIMAL + _EMAIL + "[email.inbound]\n"))
    off = MINIMAL + '\n[email]\nenabled = false\n[email.inbound]\ndomain = "hub.example.org"\n'
    assert any("email.inbound: needs [email] enabled = true" in p for p in _problems(tmp_path, off))
