"""In-process: frame encoding/decoding and the bounds verifier on hostile bytes."""

import random

import pytest

from ringpost_client import Code, ProtocolError, code_name, codec, decode_server, encode_client

SAMPLES = [
    codec.LoginOk("alice", 1, 42, 30000, 3, True),
    codec.SendAck((1 << 64) - 1, Code.INBOX_FULL),
    codec.Deliver(7, "bob", 99, 1700000000123, b"\x00\x01\xff"),
    codec.Pong(5),
    codec.Error(Code.AUTH_FAILED, "bad signature"),
    codec.GoAway(Code.SHUTDOWN, "broker is shutting down"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_server_frames_survive_encode_decode(msg):
    assert decode_server(codec.encode_server(msg)) == msg


def test_code_names_come_from_the_schema():
    assert code_name(Code.TOKEN_EXPIRED) == "TOKEN_EXPIRED"
    assert code_name(65000) == "UNKNOWN"


def test_a_client_frame_from_the_server_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="unexpected frame type Login"):
        decode_server(encode_client(codec.Login("t", "d", 0)))


def test_truncated_flipped_and_random_bytes_only_ever_raise_protocol_error():
    deliver = codec.encode_server(SAMPLES[2])
    for n in range(len(deliver)):
        with pytest.raises(ProtocolError):
            decode_server(deliver[:n])
    rng = random.Random(7)
    refused = 0
    for i in range(3000):
        b = bytearray(deliver)
        b[i % len(b)] ^= rng.randrange(1, 256)
        try:
            decode_server(bytes(b))
        except ProtocolError:
            refused += 1
    assert refused > 0
    for _ in range(2000):
        try:
            decode_server(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
        except ProtocolError:
            pass
