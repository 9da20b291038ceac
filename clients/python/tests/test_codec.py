"""In-process: frame encoding/decoding and the bounds verifier on hostile bytes."""

import random

import pytest

from ringpost_client import Code, ProtocolError, code_name, codec, decode_server, encode_client

SAMPLES = [
    codec.LoginOk("alice", 1, 42, 30000, 3, True),
    codec.SendAck((1 << 64) - 1, Code.INBOX_FULL),
    codec.Deliver(7, "bob", 99, 1700000000123, b"\x00\x01\xff"),
    codec.Deliver(8, "me", 5, 1, b"hi", outgoing=True, to_user="bob"),
    codec.Deliver(9, "alice", 0, 2, b"", "team", 4, codec.EntryKind.MembersAdded, False, "", ("carol", "dave")),
    codec.GroupReply(12, Code.OK, "team", 0, (), (codec.GroupMember("alice", True), codec.GroupMember("bob")), "bob", 7),
    codec.GroupReply(13, Code.GROUP_EXISTS, "team", 0, ("a", "b"), (), "", 0, 'group "team" already exists'),
    codec.Pong(5),
    codec.Error(Code.AUTH_FAILED, "bad signature"),
    codec.GoAway(Code.SHUTDOWN, "broker is shutting down"),
    codec.SendAck(5, Code.OK, 42),
    codec.SendAck(6, Code.OK, (1 << 64) - 1),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_server_frames_survive_encode_decode(msg):
    assert decode_server(codec.encode_server(msg)) == msg


def test_every_group_request_encodes_to_the_schema():
    from ringpost_client import ringpost_generated as fb

    def body(msg, cls):
        frame = fb.Frame.GetRootAs(encode_client(msg), 0)
        t = cls()
        t.Init(frame.Body().Bytes, frame.Body().Pos)
        return frame.BodyType(), t

    tag, m = body(codec.GroupCreate(1, "g", ("a", "b")), fb.GroupCreate)
    assert (tag, m.RequestId(), m.GroupId(), [m.Members(i) for i in range(m.MembersLength())]) == (fb.Body.GroupCreate, 1, b"g", [b"a", b"b"])
    tag, m = body(codec.GroupRemove(3, "g"), fb.GroupRemove)
    assert (tag, m.RequestId(), m.MembersLength()) == (fb.Body.GroupRemove, 3, 0)
    tag, m = body(codec.GroupInfo(6, "g", "b", 10), fb.GroupInfo)
    assert (tag, m.RequestId(), m.GroupId(), m.After(), m.Limit()) == (fb.Body.GroupInfo, 6, b"g", b"b", 10)
    tag, m = body(codec.GroupSend(7, "g", b"\x01\x02"), fb.GroupSend)
    assert (tag, m.ClientMsgId(), m.GroupId(), bytes(m.Body(i) for i in range(m.BodyLength()))) == (
        fb.Body.GroupSend, 7, b"g", b"\x01\x02")
    for msg in (codec.GroupAdd(2, "g", ("c",)), codec.GroupLeave(4, "g"), codec.GroupList(5)):
        with pytest.raises(ProtocolError, match="unexpected frame type Group"):
            decode_server(encode_client(msg))
    with pytest.raises(ValueError):
        encode_client(codec.GroupInfo(1, "g", "", -1))


def test_a_send_ack_without_own_seq_reads_as_zero():
    # As a broker from before the field writes it: a two-slot table.
    import flatbuffers

    b = flatbuffers.Builder(64)
    b.StartObject(2)
    b.PrependUint64Slot(0, 9, 0)
    b.PrependUint16Slot(1, Code.OK, 0)
    frame = codec._finish(b, codec.Body.SendAck, b.EndObject())
    assert decode_server(frame) == codec.SendAck(9, Code.OK, 0)


def test_code_names_come_from_the_schema():
    assert code_name(Code.TOKEN_EXPIRED) == "TOKEN_EXPIRED"
    assert code_name(65000) == "UNKNOWN"


def test_a_client_frame_from_the_server_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="unexpected frame type Login"):
        decode_server(encode_client(codec.Login("t", "d", 0)))


@pytest.mark.parametrize("sample", [2, 4, 5], ids=["deliver", "group-deliver", "group-reply"])
def test_truncated_flipped_and_random_bytes_only_ever_raise_protocol_error(sample):
    deliver = codec.encode_server(SAMPLES[sample])
    # A cut either fails or only removed trailing alignment padding (then the frame is intact).
    for n in range(len(deliver)):
        try:
            m = decode_server(deliver[:n])
        except ProtocolError:
            continue
        assert n >= len(deliver) - 7, f"truncated to {n} of {len(deliver)} and still decoded"
        assert m == SAMPLES[sample]
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
