// The broker's owner function (src/shard/routing.rs), for tests that need users and groups on
// given shards: FNV-1a 64 then the SplitMix64 finaliser; groups hash 0xFF ++ id. Pinned by the
// same golden values as the Rust tests (routing.test.mjs), and the tests also check LoginOk.shard.

const MASK = (1n << 64n) - 1n;
const FNV_OFFSET_BASIS = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;

function fnv(h, bytes) {
  for (const b of bytes) h = ((h ^ BigInt(b)) * FNV_PRIME) & MASK;
  return h;
}

function finish(h) {
  h = ((h ^ (h >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK;
  h = ((h ^ (h >> 27n)) * 0x94d049bb133111ebn) & MASK;
  return h ^ (h >> 31n);
}

export function stableHash(userId) {
  return finish(fnv(FNV_OFFSET_BASIS, new TextEncoder().encode(userId)));
}

export function stableGroupHash(groupId) {
  return finish(fnv(fnv(FNV_OFFSET_BASIS, [0xff]), new TextEncoder().encode(groupId)));
}

export const owner = (userId, shards) => Number(stableHash(userId) % BigInt(shards));
export const groupOwner = (groupId, shards) => Number(stableGroupHash(groupId) % BigInt(shards));

/** The first of `${base}-0`, `${base}-1`, ... for which `own(name) === shard`. */
export function nameOn(base, shard, own) {
  for (let i = 0; ; i++) if (own(`${base}-${i}`) === shard) return `${base}-${i}`;
}
