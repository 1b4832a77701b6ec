"""The federation PKI: certificate contents, safe files, expiry warnings, TLS file checks, the CLI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedaudit.cli.errors import EXIT_FINDINGS, EXIT_INPUT, EXIT_OK
from fedaudit.cli.main import main
from fedaudit.pki import authority as pki
from fedaudit.pki.tls import TlsError, TlsFiles, check_tls_files

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A PKI directory holding a fresh CA."""
    pki.init_ca(tmp_path / "pki")
    return tmp_path / "pki"


def _ext(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def test_ca_is_a_constrained_ca_with_a_private_key_file(ca_dir) -> None:
    """The CA may sign leaves only (pathlen 0), and its key is written 0600."""
    cert = pki.load_certificate(ca_dir / "ca.pem")
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.key_cert_sign
    assert ku.crl_sign
    assert not ku.digital_signature
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert pki.describe_certificate(cert).role == "ca"


def test_node_certificate_names_the_node_and_serves_only(ca_dir) -> None:
    """A node certificate: CN and first DNS SAN = node name, hosts as SANs, serverAuth only."""
    paths = pki.issue_node_certificate(ca_dir, "M01", hosts=["node-m01.example", "10.0.0.5"])
    cert = pki.load_certificate(paths.cert)
    cert.verify_directly_issued_by(pki.load_certificate(ca_dir / "ca.pem"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "M01"
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["M01", "node-m01.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert _ext(cert, x509.KeyUsage).value.digital_signature
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert pki.describe_certificate(cert).role == "node"


def test_auditor_certificate_is_a_client_identity_only(ca_dir) -> None:
    """An auditor certificate: CN = requester name, clientAuth only, no SAN to pose as a node."""
    paths = pki.issue_auditor_certificate(ca_dir, "oversight-board")
    cert = pki.load_certificate(paths.cert)
    assert cert.subject.rfc4514_string() == "CN=oversight-board"
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.SubjectAlternativeName)
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600


def test_existing_files_are_not_overwritten_unless_asked(ca_dir) -> None:
    """Re-issuing refuses and leaves the old files; overwrite=True replaces them."""
    first = pki.issue_auditor_certificate(ca_dir, "oversight-board")
    serial = pki.load_certificate(first.cert).serial_number
    with pytest.raises(pki.PkiError, match="already exists; refusing to overwrite"):
        pki.issue_auditor_certificate(ca_dir, "oversight-board")
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.init_ca(ca_dir)
    assert pki.load_certificate(first.cert).serial_number == serial
    pki.issue_auditor_certificate(ca_dir, "oversight-board", overwrite=True)
    assert pki.load_certificate(first.cert).serial_number != serial


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: pki.issue_node_certificate(d, "M_01"), "must be a DNS name"),
        (lambda d: pki.issue_node_certificate(d, "M01", hosts=["a b"]), "not an IP address"),
        (lambda d: pki.issue_auditor_certificate(d, "oversight board"), "requester name"),
        (lambda d: pki.issue_auditor_certificate(d, "a" * 65), "1 to 64"),
        (lambda d: pki.issue_auditor_certificate(d, "x", days=0), "1 to 36500 days"),
        (lambda d: pki.issue_auditor_certificate(d, "x", days=9000), "the CA expires on"),
        (lambda d: pki.issue_auditor_certificate(d.parent / "nope", "x"), "fedaudit pki init"),
    ],
)
def test_bad_input_is_refused_with_the_reason(ca_dir, call, message) -> None:
    """Names that cannot be identities, bad validity and a missing CA raise a precise PkiError."""
    with pytest.raises(pki.PkiError, match=message):
        call(ca_dir)


def test_a_node_name_cannot_appear_on_another_nodes_certificate(ca_dir) -> None:
    """Hosts equal to another node's name are refused both ways; shared hosts are fine."""
    pki.issue_node_certificate(ca_dir, "M01", hosts=["shared.example"])
    with pytest.raises(pki.PkiError, match="name of another node"):
        pki.issue_node_certificate(ca_dir, "M02", hosts=["m01"])
    pki.issue_node_certificate(ca_dir, "M03", hosts=["shared.example", "future-node"])
    with pytest.raises(pki.PkiError, match="already a host name"):
        pki.issue_node_certificate(ca_dir, "future-node")
    pki.issue_node_certificate(ca_dir, "M01", hosts=["other.example"], overwrite=True)


def test_expiry_warnings_report_certificates_expiring_within_30_days(ca_dir) -> None:
    """A certificate with 20 days left and an expired one are reported; one with 100 days is not."""
    soon = pki.issue_auditor_certificate(ca_dir, "soon", days=20)
    later = pki.issue_auditor_certificate(ca_dir, "later", days=100)
    gone = pki.issue_auditor_certificate(ca_dir, "gone", days=1, now=NOW - dt.timedelta(days=2))
    assert pki.days_until_expiry(pki.load_certificate(later.cert)) == 99
    warnings = pki.expiry_warnings([soon.cert, later.cert, gone.cert], within_days=30)
    assert [(w.common_name, w.expired) for w in warnings] == [("soon", False), ("gone", True)]
    assert warnings[0].days_left == 19
    assert "expires in 19 day(s)" in warnings[0].message
    assert "EXPIRED" in warnings[1].message
    assert pki.expiry_warnings([soon.cert], within_days=10) == []


def test_throwaway_pki_issues_everything_the_demo_needs(tmp_path) -> None:
    """One CA, a node certificate per node and the auditor's; calling again replaces them."""
    first = pki.create_throwaway_pki(tmp_path, ["M01", "M02"], "oversight-board")
    second = pki.create_throwaway_pki(tmp_path, ["M01", "M02"], "oversight-board")
    ca = pki.load_certificate(second.ca.cert)
    assert set(second.nodes) == {"M01", "M02"}
    for paths in [*second.nodes.values(), *second.auditors.values()]:
        pki.load_certificate(paths.cert).verify_directly_issued_by(ca)
    assert first.ca.cert == second.ca.cert
    assert pki.days_until_expiry(ca) <= 3


# --- fedaudit.pki.tls: file checks before gRPC sees them -------------------------------------------


@pytest.fixture
def issued(ca_dir) -> dict[str, pki.CertKeyPaths]:
    """A node and an auditor certificate of the CA in `ca_dir`."""
    return {
        "node": pki.issue_node_certificate(ca_dir, "M01", hosts=["127.0.0.1"]),
        "auditor": pki.issue_auditor_certificate(ca_dir, "oversight-board"),
    }


def test_tls_files_of_the_right_role_are_accepted(ca_dir, issued, tmp_path) -> None:
    """Node files check as a node, auditor files as an auditor, also with a CA bundle (rotation)."""
    other = pki.create_throwaway_pki(tmp_path / "new", [], "oversight-board")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(other.ca.cert.read_bytes() + (ca_dir / "ca.pem").read_bytes())
    for role, name in (("node", "CN=M01"), ("auditor", "CN=oversight-board")):
        for ca in (ca_dir / "ca.pem", bundle):
            files = TlsFiles(issued[role].cert, issued[role].key, ca)
            assert check_tls_files(files, role).certificate.subject.rfc4514_string() == name


def test_tls_files_problems_are_named_precisely(ca_dir, issued, tmp_path) -> None:
    """Missing, mismatched, foreign, expired or wrong-role files each raise a TlsError saying so."""
    ca = ca_dir / "ca.pem"
    node, auditor = issued["node"], issued["auditor"]
    other = pki.create_throwaway_pki(tmp_path / "other", ["M01"], "oversight-board")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(ca, copy / "ca.pem")
    shutil.copy(ca_dir / "ca.key", copy / "ca.key")
    expired = pki.issue_node_certificate(copy, "M01", days=1, now=NOW - dt.timedelta(days=2))
    cases = [
        (TlsFiles(node.cert, tmp_path / "missing.key", ca), "missing.key: no such private key"),
        (TlsFiles(node.cert, auditor.key, ca), "does not belong to"),
        (TlsFiles(other.nodes["M01"].cert, other.nodes["M01"].key, ca), "not issued by the"),
        (TlsFiles(node.cert, node.key, other.ca.cert), "not issued by the"),
        (TlsFiles(expired.cert, expired.key, ca), "expired on"),
        (TlsFiles(auditor.cert, auditor.key, ca), "a node needs a node certificate"),
        (TlsFiles(node.cert, node.key, node.cert), "not a CA certificate"),
        (TlsFiles(node.key, node.key, ca), "not a PEM certificate"),
    ]
    for files, message in cases:
        with pytest.raises(TlsError, match=message):
            check_tls_files(files, "node")
    with pytest.raises(TlsError, match="an auditor needs an auditor certificate"):
        check_tls_files(TlsFiles(node.cert, node.key, ca), "auditor")


# --- the CLI ---------------------------------------------------------------------------------


def test_pki_cli_round_trip(tmp_path, capsys) -> None:
    """init, issue-node, issue-auditor and show succeed (exit 0) and show lists names and SANs."""
    d = str(tmp_path / "pki")
    assert main(["pki", "init", "--dir", d]) == EXIT_OK
    assert (
        main(
            ["pki", "issue-node", "M01", "--dir", d, "--host", "10.1.2.3", "--host", "m01.example"]
        )
        == 0
    )
    assert main(["pki", "issue-auditor", "oversight-board", "--dir", d]) == EXIT_OK
    capsys.readouterr()
    files = [f"{d}/ca.pem", f"{d}/nodes/M01.pem", f"{d}/auditors/oversight-board.pem"]
    assert main(["pki", "show", *files, "--check"]) == EXIT_OK
    out = capsys.readouterr()
    assert "DNS:M01, DNS:m01.example, IP:10.1.2.3" in out.out
    assert "subject:     CN=oversight-board" in out.out
    assert "role:        auditor" in out.out
    assert "issuer:      CN=fedaudit federation CA" in out.out
    assert "warning" not in out.err


def test_pki_cli_warns_about_expiry_and_exits_1_with_check(tmp_path, capsys) -> None:
    """show warns on stderr about a certificate expiring within 30 days; --check makes it exit 1."""
    d = str(tmp_path / "pki")
    main(["pki", "init", "--dir", d])
    assert main(["pki", "issue-auditor", "short", "--dir", d, "--days", "10"]) == EXIT_OK
    capsys.readouterr()
    assert main(["pki", "show", f"{d}/auditors/short.pem"]) == EXIT_OK
    assert "expires in 9 day(s)" in capsys.readouterr().err
    assert main(["pki", "show", f"{d}/auditors/short.pem", "--check"]) == EXIT_FINDINGS
    assert main(["pki", "show", f"{d}/auditors/short.pem", "--within-days", "5", "--check"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pki", "init", "--dir", "{d}"], "already exists; refusing to overwrite"),
        (["pki", "issue-node", "M_1", "--dir", "{d}"], "must be a DNS name"),
        (["pki", "issue-auditor", "x", "--dir", "{d}/none"], "no CA here"),
        (["pki", "show", "{d}/ca.key"], "not a PEM certificate"),
        (["pki", "show", "{d}/missing.pem"], "missing.pem: no such certificate file"),
    ],
)
def test_pki_cli_bad_input_exits_2_with_the_reason(tmp_path, capsys, argv, message) -> None:
    """Bad names, an existing CA, no CA and unreadable files exit 2 with a precise message."""
    d = str(tmp_path / "pki")
    main(["pki", "init", "--dir", d])
    capsys.readouterr()
    assert main([a.format(d=d) for a in argv]) == EXIT_INPUT
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "words", [["pki"], ["pki", "init"], ["pki", "issue-node"], ["pki", "show"]]
)
def test_pki_commands_have_help(words, capsys) -> None:
    """`--help` works on `fedaudit pki` and its sub-commands."""
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    assert "usage: fedaudit pki" in capsys.readouterr().out
