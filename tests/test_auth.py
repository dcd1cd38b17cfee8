"""SASL credentials: the bytes each mechanism sends, and that secrets stay hidden."""

from __future__ import annotations

import pytest

from txpika._wire import decode_table
from txpika.auth import AMQPlainCredentials, Credentials, ExternalCredentials, PlainCredentials
from txpika.errors import AuthenticationError

SECRET = "s3cr3t"


def test_plain_response():
    creds = PlainCredentials("guest", "guest")
    assert creds.mechanism == "PLAIN"
    assert creds.response() == b"\0guest\0guest"


def test_plain_response_utf8():
    creds = PlainCredentials("j\u00fcrgen", "p\u00e4ss")
    assert creds.response() == b"\0j\xc3\xbcrgen\0p\xc3\xa4ss"


def test_amqplain_response_is_a_table_without_its_length():
    creds = AMQPlainCredentials("guest", SECRET)
    assert creds.mechanism == "AMQPLAIN"
    response = creds.response()
    assert response == b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x06s3cr3t"
    table, end = decode_table(len(response).to_bytes(4, "big") + response, 0)
    assert table == {"LOGIN": "guest", "PASSWORD": SECRET}
    assert end == len(response) + 4


def test_external_response_is_empty():
    creds = ExternalCredentials()
    assert creds.mechanism == "EXTERNAL"
    assert creds.response() == b""
    assert repr(creds) == "ExternalCredentials()"


@pytest.mark.parametrize("creds", [PlainCredentials("u", SECRET),
                                   AMQPlainCredentials("u", SECRET), ExternalCredentials()],
                         ids=lambda c: c.mechanism)
def test_a_challenge_is_an_authentication_error(creds):
    with pytest.raises(AuthenticationError) as info:
        creds.challenge(b"challenge")
    assert info.value.reply_code == 403
    assert creds.mechanism in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_base_class_has_no_response():
    with pytest.raises(NotImplementedError):
        Credentials().response()


@pytest.mark.parametrize("cls", [PlainCredentials, AMQPlainCredentials])
def test_password_never_shown(cls):
    creds = cls("alice", SECRET)
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds]),
                 repr({"c": creds})):
        assert SECRET not in text
        assert "alice" in text
    assert repr(creds) == f"{cls.__name__}(username='alice', password=<hidden>)"
    assert not hasattr(creds, "__dict__")  # nothing else to leak it through vars()


def test_equality_and_hash():
    a = PlainCredentials("u", "p")
    assert a == PlainCredentials("u", "p")
    assert a != PlainCredentials("u", "q")
    assert a != PlainCredentials("v", "p")
    assert a != AMQPlainCredentials("u", "p")
    assert hash(a) == hash(PlainCredentials("u", "p"))
    assert len({a, PlainCredentials("u", "p"), AMQPlainCredentials("u", "p")}) == 2
