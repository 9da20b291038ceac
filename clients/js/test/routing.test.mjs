// The test support's copy of the owner function matches the broker's golden values.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { groupOwner, owner, stableGroupHash, stableHash } from './support/routing.mjs';

test('owner hash: the golden values of src/shard/routing.rs', () => {
  assert.equal(stableHash(''), 0xf52a15e9a9b5e89bn);
  assert.equal(stableHash('alice'), 0xc5d1556d66774a5cn);
  assert.equal(stableHash('bob'), 0x6e8572d08b268decn);
  assert.equal(stableHash('user-1'), 0xc499b5f8a721df58n);
  assert.equal(stableHash('用户'), 0x48e12c12f68f9eaen);
  assert.equal(stableGroupHash(''), 0x4f2db50f124040cdn);
  assert.equal(stableGroupHash('team'), 0xd4ac76855e55c86fn);
  assert.equal(stableGroupHash('alice'), 0xffab0826aeac7ba4n);
  assert.equal(stableGroupHash('room-1'), 0x881d18df448ed56dn);
  assert.equal(stableGroupHash('用户'), 0x297afc1cfdd1d5d0n);
  assert.equal(owner('alice', 1), 0);
  assert.equal(groupOwner('team', 1), 0);
});
