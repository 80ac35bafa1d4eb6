//! Which input partition a customer id's records land in: the partitioner the input's
//! producers use (`input.partitioner`), computed here so that any instance can tell
//! which partition, and so which instance, holds a customer (the lookup API), and so
//! that an erase request produced by `DELETE /customers/{id}` lands beside the
//! customer's events.
//!
//! The names and hashes are librdkafka's: `murmur2_random` is the Java client's (and
//! Kafka Streams') default partitioner, `consistent_random` librdkafka's own default
//! (CRC-32), `fnv1a_random` Sarama's (Go). The `_random` part only concerns records without
//! a key, which a customer's records never are. `tests/partitioner.rs` checks each
//! against librdkafka's own choice.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// A keyed partitioner, by its librdkafka name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Partitioner {
    /// Kafka's murmur2 of the key, made positive, modulo the partition count.
    #[default]
    Murmur2Random,
    /// CRC-32 (IEEE) of the key modulo the partition count.
    ConsistentRandom,
    /// 32-bit FNV-1a of the key modulo the partition count.
    Fnv1aRandom,
}

impl Partitioner {
    pub const ALL: [Partitioner; 3] = [
        Partitioner::Murmur2Random,
        Partitioner::ConsistentRandom,
        Partitioner::Fnv1aRandom,
    ];

    /// librdkafka's name, as its `partitioner` property takes it.
    pub const fn name(self) -> &'static str {
        match self {
            Partitioner::Murmur2Random => "murmur2_random",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Fnv1aRandom => "fnv1a_random",
        }
    }

    /// The partition of `key` among `partitions` (at least one).
    pub fn partition(self, key: &[u8], partitions: u32) -> i32 {
        let hash = match self {
            Partitioner::Murmur2Random => murmur2(key) & 0x7fff_ffff,
            Partitioner::ConsistentRandom => crc32fast::hash(key),
            Partitioner::Fnv1aRandom => fnv1a(key),
        };
        (hash % partitions.max(1)) as i32
    }
}

impl fmt::Display for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Partitioner {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Partitioner::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                format!("unknown partitioner {name:?} (murmur2_random, consistent_random, fnv1a_random)")
            })
    }
}

impl TryFrom<String> for Partitioner {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as librdkafka
/// implements it.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in chunks.by_ref() {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("chunks of 4"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// 32-bit FNV-1a, made positive as Sarama's hash partitioner does (librdkafka's
/// `rd_fnv1a`: the absolute value of the hash as a signed integer).
fn fnv1a(data: &[u8]) -> u32 {
    let hash = data.iter().fold(0x811c_9dc5, |h: u32, &byte| {
        (h ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    (hash as i32).wrapping_abs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_own_test_vectors() {
        // Kafka's UtilsTest.testMurmur2, as Java ints.
        for (key, expected) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, expected, "{key}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for partitioner in Partitioner::ALL {
            assert_eq!(partitioner.name().parse(), Ok(partitioner));
        }
        assert!("murmur2"
            .parse::<Partitioner>()
            .unwrap_err()
            .contains("unknown partitioner"));
    }
}
