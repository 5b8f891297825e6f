"""`hashex node init|rotate-key`, `hashex peer ...` and `hashex policy ...`
run in-process on real data directories (no node needs to be running for any of them)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from services.cli.main import main
from services.core import tls
from services.core.trust import TrustStore, read_card
from tests.cli.conftest import Run


def card_of(run: Run, data_dir: Path, out: Path) -> Path:
    code, _, err = run("peer", "card", "--out", out, "--data-dir", data_dir)
    assert code == 0, err
    return out


def sans(pem_path: Path) -> list[str]:
    certificate = x509.load_pem_x509_certificate(pem_path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(getattr(name, "value", name)) for name in names]


def snapshot(data_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(data_dir)): p.read_bytes() for p in data_dir.rglob("*") if p.is_file()
    }


def test_init_creates_tls_material_and_is_idempotent(gb: Path, run: Run) -> None:
    for key in ("keys/case.key", "keys/signing/ed25519_1.key", "tls/ca.key", "tls/node.key"):
        assert stat.S_IMODE((gb / key).stat().st_mode) == 0o600, key
    assert set(sans(gb / "tls" / "node.pem")) == {
        "spiffe://hashex/node/gb-nca", "localhost", "gw.internal", "hashex.nca.example",
        "127.0.0.1", "::1", "10.1.2.3",
    }  # fmt: skip
    ca = tls.load_node_ca(
        node_id="gb-nca", certificate_path=gb / "tls/ca.pem", key_path=gb / "tls/ca.key"
    )
    node = x509.load_pem_x509_certificate((gb / "tls" / "node.pem").read_bytes())
    node.verify_directly_issued_by(ca.material.certificate)
    toml = (gb / "node.toml").read_text()
    assert 'gateway_endpoint = "hashex.nca.example:7443"' in toml
    assert 'gateway_listen = "0.0.0.0:7443"' in toml

    before = snapshot(gb)
    code, out, _ = run("node", "init", "--node-id", "gb-nca", "--data-dir", gb)
    assert code == 0 and "nothing changed" in out
    assert snapshot(gb) == before


def test_init_completes_missing_pieces_only(gb: Path, run: Run) -> None:
    ca_pem = (gb / "tls" / "ca.pem").read_bytes()
    signing = (gb / "keys" / "signing" / "ed25519_1.key").read_bytes()
    code, out, _ = run(
        "node", "init", "--node-id", "gb-nca", "--data-dir", gb, "--gateway-host", "gw2.internal"
    )
    assert code == 0 and "re-issued with host(s) gw2.internal" in out
    assert {"gw.internal", "gw2.internal"} <= set(sans(gb / "tls" / "node.pem")), "hosts kept"

    (gb / "tls" / "node.pem").unlink()
    (gb / "tls" / "node.key").unlink()
    code, out, err = run("node", "init", "--node-id", "gb-nca", "--data-dir", gb)
    assert code == 0, err
    assert "completed" in out and "node cert" in out and "node CA" not in out
    assert (gb / "tls" / "ca.pem").read_bytes() == ca_pem
    assert (gb / "keys" / "signing" / "ed25519_1.key").read_bytes() == signing
    assert "hashex.nca.example" in sans(gb / "tls" / "node.pem"), "the endpoint host is named"

    (gb / "tls" / "ca.key").unlink()
    code, _, err = run("node", "init", "--node-id", "gb-nca", "--data-dir", gb)
    assert code == 3 and "ca.key is missing but" in err
    code, _, err = run(
        "node", "init", "--node-id", "gb-nca", "--data-dir", gb, "--gateway-host", "a b"
    )
    assert code == 2 and "DNS name or an IP address" in err
    code, _, err = run("node", "init", "--node-id", "other-node", "--data-dir", gb)
    assert code == 2 and "already holds node 'gb-nca'" in err


def test_rotate_key_adds_a_version_that_signs_the_next_card(
    gb: Path, run: Run, tmp_path: Path
) -> None:
    code, out, _ = run("node", "rotate-key", "--data-dir", gb)
    assert code == 0 and "new signing key ed25519:2" in out
    assert stat.S_IMODE((gb / "keys" / "signing" / "ed25519_2.key").stat().st_mode) == 0o600
    card = read_card(card_of(run, gb, tmp_path / "gb.card"))
    assert [k.key_id for k in card.signing_keys] == ["ed25519:1", "ed25519:2"]
    assert card.endpoint == "hashex.nca.example:7443"


def test_peer_exchange_add_list_replace_remove(
    gb: Path, us: Path, run: Run, tmp_path: Path
) -> None:
    gb_card = card_of(run, gb, tmp_path / "gb.card")
    code, _, err = run("peer", "add", gb_card, "--data-dir", us)
    assert code == 2 and "choose what gb-nca receives: --policy share-all" in err
    assert "nothing was pinned" in err and not (us / "peers" / "gb-nca.card").exists()
    code, out, err = run("peer", "add", gb_card, "--policy", "share-all", "--data-dir", us)
    assert code == 0, err
    assert "pinned peer gb-nca at hashex.nca.example:7443" in out
    assert "policy: share-all (every category and algorithm" in out
    assert (us / "policy" / "gb-nca.toml").exists()
    assert (us / "peers" / "gb-nca.card").read_bytes() == gb_card.read_bytes()
    code, out, _ = run("peer", "add", gb_card, "--policy", "share-nothing", "--data-dir", us)
    assert code == 0 and "already pinned" in out
    assert "the existing one, generation 1, is kept (--policy share-nothing not applied)" in out

    code, out, _ = run("peer", "list", "--data-dir", us)
    fingerprint = tls.certificate_fingerprint((gb / "tls" / "ca.pem").read_bytes())
    assert code == 0 and "gb-nca  hashex.nca.example:7443" in out and fingerprint in out
    code, out, _ = run("peer", "list", "--json", "--data-dir", us)
    assert '"policy_generation": 1' in out

    own = card_of(run, us, tmp_path / "us.card")
    code, _, err = run("peer", "add", own, "--data-dir", us)
    assert code == 2 and "this node itself" in err

    run("node", "rotate-key", "--data-dir", gb)
    newer = card_of(run, gb, tmp_path / "gb2.card")
    code, _, err = run("peer", "add", newer, "--data-dir", us)
    assert code == 2 and "signing keys differ" in err and "--replace" in err
    code, out, _ = run("peer", "add", newer, "--replace", "--data-dir", us)
    assert code == 0 and "replaced the card of peer gb-nca" in out

    code, out, _ = run("peer", "remove", "gb-nca", "--data-dir", us)
    assert code == 0 and "removed peer gb-nca" in out
    code, out, _ = run("peer", "remove", "gb-nca", "--data-dir", us)
    assert code == 0 and "not pinned; nothing changed" in out
    assert TrustStore(us / "peers", (us / "tls" / "ca.pem").read_bytes()).peers() == {}


def test_peer_add_refuses_bad_cards(gb: Path, us: Path, run: Run, tmp_path: Path) -> None:
    data = card_of(run, gb, tmp_path / "gb.card").read_bytes()
    tampered = tmp_path / "tampered.card"
    tampered.write_bytes(data.replace(b'"key_id":"ed25519:1"', b'"key_id":"ed25519:2"'))
    code, _, err = run("peer", "add", tampered, "--data-dir", us)
    assert code == 2 and "not by the node's current key" in err
    middle = len(data) // 2
    tampered.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    code, _, err = run("peer", "add", tampered, "--data-dir", us)
    assert code == 2 and "peer card" in err
    code, _, err = run("peer", "add", tmp_path / "missing.card", "--data-dir", us)
    assert code == 2 and "cannot read card file" in err
    assert not (us / "peers" / "gb-nca.card").exists()


def test_peer_card_needs_a_dialable_endpoint(gb: Path, us: Path, run: Run, tmp_path: Path) -> None:
    local = tmp_path / "local"
    run("node", "init", "--node-id", "de-bka", "--data-dir", local, "--gateway-listen", "[::]:7443")
    code, _, err = run("peer", "card", "--out", tmp_path / "x.card", "--data-dir", local)
    assert code == 2 and "wildcard" in err
    code, _, _ = run(
        "peer", "card", "--out", tmp_path / "x.card", "--endpoint", "de.example:7443",
        "--data-dir", local,
    )  # fmt: skip
    assert code == 0 and read_card(tmp_path / "x.card").endpoint == "de.example:7443"
    code, _, err = run(
        "peer",
        "card",
        "--out",
        tmp_path / "x.card",
        "--endpoint",
        "de.example",
        "--data-dir",
        local,
    )
    assert code == 2 and "HOST:PORT" in err
    (gb / "keys" / "signing" / "ed25519_1.key").chmod(0o644)
    code, _, err = run("peer", "card", "--out", tmp_path / "y.card", "--data-dir", gb)
    assert code == 3 and "chmod 600" in err


def test_revoke_by_fingerprint_or_certificate(gb: Path, run: Run, tmp_path: Path) -> None:
    issue = ("unit", "issue", "ceop-desk", "--role", "analyst", "--out", tmp_path / "unit")
    run(*issue, "--data-dir", gb)
    pem = tmp_path / "unit" / "ceop-desk.pem"
    fingerprint = tls.certificate_fingerprint(pem.read_bytes())
    code, out, _ = run("peer", "revoke", "--cert", pem, "--reason", "laptop lost", "--data-dir", gb)
    assert code == 0 and f"revoked sha256 {fingerprint}" in out
    colons = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    code, out, _ = run("peer", "revoke", colons, "--data-dir", gb)
    assert code == 0 and "already revoked; nothing changed" in out
    assert TrustStore(gb / "peers", b"").denied() == {fingerprint}
    assert "laptop lost" in (gb / "peers" / "denied.txt").read_text()
    code, _, err = run("peer", "revoke", "abc123", "--data-dir", gb)
    assert code == 2 and "SHA-256 fingerprint" in err
    code, _, err = run("peer", "revoke", "--cert", gb / "node.toml", "--data-dir", gb)
    assert code == 2 and "not a PEM certificate" in err
    with pytest.raises(SystemExit):
        main(["peer", "revoke", fingerprint, "--cert", str(pem), "--data-dir", str(gb)])


def test_policy_show_and_set(gb: Path, us: Path, run: Run, tmp_path: Path) -> None:
    share_all = ("--policy", "share-all")
    run("peer", "add", card_of(run, gb, tmp_path / "gb.card"), *share_all, "--data-dir", us)
    code, out, _ = run("policy", "show", "gb-nca", "--data-dir", us)
    assert code == 0 and "generation = 1" in out and 'categories = ["all"]' in out
    code, out, err = run(
        "policy", "set", "gb-nca", "--categories", "vics-us:1,vics-us:2", "uncategorised",
        "--algorithms", "md5", "pdq", "--no-victim-status", "--desk",
        "--embargo", "op-nightjar", "--embargo", "op-wren", "--data-dir", us,
    )  # fmt: skip
    assert code == 0, err
    assert "generation 2" in out
    assert 'categories = ["uncategorised", "vics-us:1", "vics-us:2"]' in out
    assert 'algorithms = ["md5", "pdq"]' in out
    assert "disclose_victim_status = false" in out and "disclose_desk = true" in out
    code, out, _ = run("policy", "set", "gb-nca", "--lift-embargo", "op-wren", "--data-dir", us)
    assert code == 0 and 'embargoed_series = ["op-nightjar"]' in out and "generation = 3" in out
    code, out, _ = run("policy", "set", "gb-nca", "--desk", "--data-dir", us)
    assert code == 0 and "unchanged (generation 3)" in out

    saved = (us / "policy" / "gb-nca.toml").read_bytes()
    for bad, message in [
        (("--categories", "vics-us:9"), "category 'vics-us:9'"),
        (("--algorithms", "sha3"), "unknown algorithm(s) sha3"),
        (("--embargo", "bad series"), "series id 'bad series'"),
        (("--embargo", "x", "--lift-embargo", "x"), "both embargoed and lifted"),
    ]:
        code, _, err = run("policy", "set", "gb-nca", *bad, "--data-dir", us)
        assert code == 2 and message in err, err
    assert (us / "policy" / "gb-nca.toml").read_bytes() == saved
    code, _, err = run("policy", "set", "fr-ocrvp", "--desk", "--data-dir", us)
    assert code == 2 and "not a pinned peer" in err
    code, _, err = run("policy", "show", "fr-ocrvp", "--data-dir", us)
    assert code == 2 and "not a pinned peer" in err


def test_no_command_prints_a_secret(gb: Path, us: Path, run: Run, tmp_path: Path) -> None:
    run("node", "rotate-key", "--data-dir", gb)
    run(
        "peer",
        "add",
        card_of(run, gb, tmp_path / "gb.card"),
        "--policy",
        "share-all",
        "--data-dir",
        us,
    )
    run(
        "unit",
        "issue",
        "ceop-desk",
        "--role",
        "analyst",
        "--out",
        tmp_path / "unit",
        "--data-dir",
        gb,
    )
    run("peer", "list", "--data-dir", us)
    printed = "".join(run.seen)
    assert "PRIVATE KEY" not in printed
    secrets = [p.read_text().split()[-1] for p in (gb / "keys" / "signing").glob("*.key")]
    assert secrets and not any(secret in printed for secret in secrets)


def test_key_history_survives_deleting_a_key_and_peer_list_shows_each_keys_state(
    gb: Path, us: Path, run: Run, tmp_path: Path
) -> None:
    gb_card = card_of(run, gb, tmp_path / "gb.card")
    code, _, err = run("peer", "add", gb_card, "--policy", "share-nothing", "--data-dir", us)
    assert code == 0, err
    run("node", "rotate-key", "--data-dir", gb)
    run("node", "rotate-key", "--data-dir", gb)
    (gb / "keys" / "signing" / "ed25519_1.key").unlink()
    code, _, err = run("node", "revoke-key", "ed25519:3", "--entirely", "--data-dir", gb)
    assert code == 3 and "current signing key" in err and "rotate-key" in err
    code, out, _ = run("node", "revoke-key", "ed25519:1", "--from-seq", "5", "--data-dir", gb)
    assert code == 0 and "ed25519:1 revoked from seq 5 on" in out
    code, out, _ = run("node", "revoke-key", "ed25519:1", "--from-seq", "9", "--data-dir", gb)
    assert code == 0 and "already revoked from seq 5 on; nothing changed" in out
    code, _, err = run("node", "revoke-key", "ed25519:7", "--entirely", "--data-dir", gb)
    assert code == 4 and "never had a signing key 'ed25519:7'" in err

    card = read_card(card_of(run, gb, tmp_path / "gb2.card"))
    assert [(k.key_id, k.revoked_from_seq) for k in card.signing_keys] == [
        ("ed25519:1", 5),
        ("ed25519:2", 0),
        ("ed25519:3", 0),
    ], "the deleted key stays in the history the card carries"
    code, out, err = run(
        "peer", "add", tmp_path / "gb2.card", "--replace", "--policy", "share-nothing",
        "--data-dir", us,
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = run("peer", "list", "--data-dir", us)
    assert "keys ed25519:1 (revoked from seq 5), ed25519:2 (retired), ed25519:3 (current)" in out
    assert "with the node running, those peers rotated to since are shown too" in out
    code, out, _ = run("peer", "list", "--json", "--data-dir", us)
    [key1, *_] = json.loads(out)["keys"]
    assert key1 == {
        "key_id": "ed25519:1",
        "state": "revoked",
        "retired_at_seq": 0,
        "revoked_from_seq": 5,
        "on_card": True,
        "from_log": False,
    }


def test_peer_add_share_nothing_saves_no_policy(
    gb: Path, us: Path, run: Run, tmp_path: Path
) -> None:
    gb_card = card_of(run, gb, tmp_path / "gb.card")
    code, out, err = run("peer", "add", gb_card, "--policy", "share-nothing", "--data-dir", us)
    assert code == 0, err
    assert "nothing leaves for gb-nca until `hashex policy set gb-nca ...`" in out
    assert not (us / "policy" / "gb-nca.toml").exists()
    code, out, _ = run("policy", "show", "gb-nca", "--data-dir", us)
    assert code == 0 and "nothing is shared with it" in out
    with pytest.raises(SystemExit) as usage:
        run("peer", "add", gb_card, "--policy", "share-most", "--data-dir", us)
    assert usage.value.code == 2 and "invalid choice: 'share-most'" in run.capsys.readouterr().err
