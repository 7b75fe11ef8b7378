"""Secrets never reach MLflow: env values and URI passwords are masked."""

from __future__ import annotations

from quicktune.tracking import (
    redact,
    secret_values,
)


def test_redaction_masks_secret_env_values_and_uri_passwords(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-pw")
    monkeypatch.setenv("HARMLESS", "s3cr3t-value-not-a-secret-name")
    assert "s3cr3t-value" in secret_values() and "hunter2-pw" in secret_values()
    text = redact("key=s3cr3t-value pw=hunter2-pw uri=https://bob:pa55@host/x")
    assert "s3cr3t-value" not in text and "hunter2-pw" not in text and "pa55" not in text
    assert "https://bob:***@host/x" in text
