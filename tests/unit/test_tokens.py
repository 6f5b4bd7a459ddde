"""api/tokens.py: the valid set, its reload from files, and a failed reload keeping it."""
from __future__ import annotations

from maskflow.api.tokens import TokenSet
from maskflow.infra.wiring.config import load_config


def test_any_listed_token_matches():
    tokens = TokenSet(("alpha", "beta"))
    assert tokens.matches("alpha") and tokens.matches(b"beta")
    assert not tokens.matches("alph") and not tokens.matches("") and not tokens.matches("alphaa")
    assert tokens.enabled and not TokenSet(()).enabled


def test_a_malformed_file_keeps_the_tokens_in_force(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text("alpha\n")
    env = {"MASKFLOW_API_TOKENS_FILE": str(path)}
    tokens = TokenSet.from_config(load_config(env=env), env=env)
    path.write_text("has space-secret-xyz\n")
    assert not tokens.reload() and tokens.matches("alpha")
    assert "secret-xyz" not in caplog.text and "api.tokens" in caplog.text
    path.write_text("beta\n")
    assert tokens.reload() and tokens.matches("beta") and not tokens.matches("alpha")


def test_a_configured_file_keeps_authentication_on_when_empty(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("")
    env = {"MASKFLOW_API_TOKENS_FILE": str(path)}
    tokens = TokenSet.from_config(load_config(env=env), env=env)
    assert tokens.enabled and not tokens.matches("")
