"""The test support's copy of the owner function matches the broker's golden values."""

from support import group_owner, owner
from support import stable_group_hash, stable_hash


def test_owner_hash_golden_values_of_src_shard_routing_rs():
    assert stable_hash("") == 0xF52A15E9A9B5E89B
    assert stable_hash("alice") == 0xC5D1556D66774A5C
    assert stable_hash("bob") == 0x6E8572D08B268DEC
    assert stable_hash("user-1") == 0xC499B5F8A721DF58
    assert stable_hash("用户") == 0x48E12C12F68F9EAE
    assert stable_group_hash("") == 0x4F2DB50F124040CD
    assert stable_group_hash("team") == 0xD4AC76855E55C86F
    assert stable_group_hash("alice") == 0xFFAB0826AEAC7BA4
    assert stable_group_hash("room-1") == 0x881D18DF448ED56D
    assert stable_group_hash("用户") == 0x297AFC1CFDD1D5D0
    assert owner("alice", 1) == 0 and group_owner("team", 1) == 0
