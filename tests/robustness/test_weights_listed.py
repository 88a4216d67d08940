"""``check_bundle_weights`` (issue 26, group E): a bundle's listed large file compared with the hash in its
``large_files.yml``; the runs that read the bundle's model are in test_weights_hash.py."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from vmunetv2_monai.bundle import weights
from vmunetv2_monai.bundle.weights import check_bundle_weights, listed_hash


def _bundle(root: Path, content: bytes, listed: bytes | None = None, hash_type: str = "sha256") -> Path:
    """``root/models/model.pt`` holding ``content``, listed in ``root/large_files.yml`` with the hash of ``listed``
    (default: of ``content``)."""
    (root / "models").mkdir(parents=True)
    model = root / "models" / "model.pt"
    model.write_bytes(content)
    digest = hashlib.new(hash_type, content if listed is None else listed).hexdigest()
    (root / "large_files.yml").write_text(
        f'large_files:\n  - path: "models/model.pt"\n    url: ""\n    hash_val: "{digest}"\n'
        f'    hash_type: "{hash_type}"\n')
    return model


def test_matching_file_passes_quietly(tmp_path, caplog):
    model = _bundle(tmp_path, b"weights")
    with caplog.at_level(logging.WARNING):
        assert check_bundle_weights(model) is True
    assert not caplog.records


@pytest.mark.parametrize("hash_type", ["sha256", "md5"])
def test_mismatch_warns_once_naming_the_file_and_both_hashes(tmp_path, caplog, hash_type):
    model = _bundle(tmp_path, b"tampered", listed=b"weights", hash_type=hash_type)
    with caplog.at_level(logging.WARNING):
        assert check_bundle_weights(model) is False
        assert check_bundle_weights(model) is False  # cached: no second hash, no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    text = warnings[0]
    assert str(model) in text and hashlib.new(hash_type, b"tampered").hexdigest() in text
    assert hashlib.new(hash_type, b"weights").hexdigest() in text and "large_files.yml" in text


def test_a_changed_file_is_hashed_again(tmp_path, monkeypatch):
    model = _bundle(tmp_path, b"weights")
    assert check_bundle_weights(model) is True
    model.write_bytes(b"retrained weights")
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    assert check_bundle_weights(model) is False
    hashed = []
    monkeypatch.setattr(weights, "listed_hash", lambda p: hashed.append(p))
    assert check_bundle_weights(model) is False and not hashed  # same version: the cached answer


def test_files_no_bundle_lists_are_not_checked(tmp_path):
    model = _bundle(tmp_path / "bundle", b"weights")
    other = tmp_path / "bundle" / "runs" / "a" / "models" / "model.pt"  # a training output inside the bundle
    other.parent.mkdir(parents=True)
    other.write_bytes(b"other")
    loose = tmp_path / "loose.pt"
    loose.write_bytes(b"x")
    assert listed_hash(model) is not None
    assert check_bundle_weights(other) is None and check_bundle_weights(loose) is None
    assert check_bundle_weights(tmp_path / "missing.pt") is None


def test_unreadable_list_is_named_in_a_warning(tmp_path, caplog):
    model = _bundle(tmp_path, b"weights")
    (tmp_path / "large_files.yml").write_text("large_files: [unclosed\n")
    with caplog.at_level(logging.WARNING):
        assert check_bundle_weights(model) is None
    assert "large_files.yml" in caplog.text and str(model) in caplog.text
