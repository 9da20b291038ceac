//! Which shard owns a user: the one pure function every shard agrees on.
//!
//! `owner(user) = stable_hash(user) % shards`. Stored data (per-shard logs, inboxes) depends on
//! these values, so the hash is defined here by hand, byte for byte, instead of borrowing
//! `std::hash` (whose output may change between Rust releases) or a crate whose algorithm could
//! change under us:
//!
//! 1. FNV-1a 64 over the UTF-8 bytes of the user ID
//!    (offset basis `0xcbf2_9ce4_8422_2325`, prime `0x0000_0100_0000_01b3`), then
//! 2. the SplitMix64 finaliser, so that the low bits (the ones `%` looks at) depend on every
//!    input byte — plain FNV-1a sends `"user1".."user9"` to neighbouring values.
//!
//! Groups live in their own namespace: `group_owner(group) = stable_hash(0xFF ++ group) %
//! shards`, the same function over the group ID's bytes preceded by the byte 0xFF. 0xFF never
//! occurs in UTF-8, so no user ID is ever hashed as the same byte string as a group ID: a user
//! and a group with the same name are placed independently.
//!
//! [`HASH_VERSION`] is recorded next to stored data; bump it only together with a migration.
//! The golden-value tests below pin the function: if one fails, stored data would be stranded.

/// Version of [`stable_hash`]; stored beside shard data so a future change is detected.
pub const HASH_VERSION: u32 = 1;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The byte that starts every group ID's hash input (never a byte of UTF-8 text).
pub const GROUP_NAMESPACE: u8 = 0xFF;

/// FNV-1a 64 followed by the SplitMix64 finaliser. Never changes between builds.
pub fn stable_hash(user_id: &str) -> u64 {
    hash_bytes(FNV_OFFSET_BASIS, user_id.as_bytes())
}

/// [`stable_hash`] of a group ID, in the group namespace (see the module doc).
pub fn stable_group_hash(group_id: &str) -> u64 {
    let h = fnv(FNV_OFFSET_BASIS, &[GROUP_NAMESPACE]);
    hash_bytes(h, group_id.as_bytes())
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn hash_bytes(state: u64, bytes: &[u8]) -> u64 {
    let mut h = fnv(state, bytes);
    // SplitMix64 finaliser (Steele, Lea, Flood 2014).
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The shard that owns `user_id` when the broker runs `shards` shards (`shards >= 1`).
pub fn owner(user_id: &str, shards: usize) -> usize {
    // `shards` is validated to be 1..=1024 by the config; max(1) keeps this total anyway.
    (stable_hash(user_id) % shards.max(1) as u64) as usize
}

/// The shard that owns group `group_id` (orders its messages and holds its members).
pub fn group_owner(group_id: &str, shards: usize) -> usize {
    (stable_group_hash(group_id) % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: these must never change (stored data depends on them).
    #[test]
    fn stable_hash_golden_values() {
        assert_eq!(stable_hash(""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash("alice"), 0xc5d1_556d_6677_4a5c);
        assert_eq!(stable_hash("bob"), 0x6e85_72d0_8b26_8dec);
        assert_eq!(stable_hash("user-1"), 0xc499_b5f8_a721_df58);
        assert_eq!(stable_hash("用户"), 0x48e1_2c12_f68f_9eae);
    }

    #[test]
    fn owner_golden_values() {
        let got: Vec<usize> = ["alice", "bob", "carol", "dave", "user-1", "user-2"]
            .iter()
            .map(|u| owner(u, 16))
            .collect();
        assert_eq!(got, vec![12, 12, 13, 6, 8, 11]);
        assert_eq!(owner("alice", 1), 0);
        assert_eq!(owner("alice", 0), 0, "zero shards must not divide by zero");
    }

    /// Golden values of the group namespace, cross-checked with an independent Python
    /// implementation (FNV-1a 64 over b"\xff" + id, SplitMix64 finaliser).
    #[test]
    fn group_hash_golden_values() {
        assert_eq!(stable_group_hash(""), 0x4f2d_b50f_1240_40cd);
        assert_eq!(stable_group_hash("team"), 0xd4ac_7685_5e55_c86f);
        assert_eq!(stable_group_hash("alice"), 0xffab_0826_aeac_7ba4);
        assert_eq!(stable_group_hash("room-1"), 0x881d_18df_448e_d56d);
        assert_eq!(stable_group_hash("用户"), 0x297a_fc1c_fdd1_d5d0);
        assert_ne!(stable_group_hash("alice"), stable_hash("alice"));
        let got: Vec<usize> = ["team", "alice", "room-1", "room-2", "general", "random"]
            .iter()
            .map(|g| group_owner(g, 16))
            .collect();
        assert_eq!(got, vec![15, 4, 13, 2, 13, 4]);
    }

    #[test]
    fn owner_spreads_users_evenly() {
        let shards = 16;
        let mut counts = vec![0usize; shards];
        for i in 0..160_000 {
            counts[owner(&format!("user{i}"), shards)] += 1;
        }
        for (s, c) in counts.iter().enumerate() {
            assert!((9_000..=11_000).contains(c), "shard {s} got {c} of 160000");
        }
    }
}
