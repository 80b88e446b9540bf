//! The key of a lease, parsed once.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use super::{ShardId, StreamIdentifier};
use crate::error::Error;

/// The key of a lease: the shard id for an application of one stream
/// (`shardId-000000000001`), or the Java KCL's multi-stream form
/// `account:streamName:creationEpoch:shardId`.
///
/// Parsed once, when made; compares, orders and hashes as its text, and
/// borrows as `str`, so maps keyed by lease keys are looked up with either.
///
/// ```
/// use rkcl::model::LeaseKey;
///
/// let key: LeaseKey = "123456789012:orders:1700000000:shardId-000000000003".parse()?;
/// assert_eq!(key.shard_id().as_str(), "shardId-000000000003");
/// assert_eq!(key.stream_identifier(), Some("123456789012:orders:1700000000"));
/// let parent = key.sibling(&"shardId-000000000001".into());
/// assert_eq!(parent.as_str(), "123456789012:orders:1700000000:shardId-000000000001");
/// # Ok::<(), rkcl::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LeaseKey {
    text: String,
    /// Where the shard id starts in `text` (0 for a single-stream key).
    shard_at: usize,
}

impl LeaseKey {
    /// Parses a lease key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty key, or one with colons that is
    /// not `account:streamName:creationEpoch:shardId` (four non-empty parts,
    /// a numeric creation epoch).
    pub fn parse(text: impl Into<String>) -> Result<Self, Error> {
        let text = text.into();
        let invalid = |why: &str| {
            Error::InvalidInput(format!(
                "{text:?} is not a lease key ({why}): expected a shard id or \
                 account:streamName:creationEpoch:shardId"
            ))
        };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        let parts: Vec<&str> = text.split(':').collect();
        let shard_at = match parts.as_slice() {
            [_] => 0,
            [account, stream, epoch, shard] => {
                if [account, stream, epoch, shard].iter().any(|p| p.is_empty()) {
                    return Err(invalid("an empty part"));
                }
                if !epoch.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("the creation epoch is not a number"));
                }
                text.len() - shard.len()
            }
            _ => return Err(invalid("not four parts")),
        };
        Ok(Self { text, shard_at })
    }

    /// The key of a shard's lease in an application of one stream: the
    /// shard id.
    pub fn for_shard(shard: &ShardId) -> Self {
        Self {
            text: shard.as_str().to_owned(),
            shard_at: 0,
        }
    }

    /// The key of a shard's lease in a multi-stream application:
    /// `account:streamName:creationEpoch:shardId`.
    pub fn for_stream_shard(stream: &StreamIdentifier, shard: &ShardId) -> Self {
        let prefix = stream.to_string();
        Self {
            shard_at: prefix.len() + 1,
            text: format!("{prefix}:{shard}"),
        }
    }

    /// The key as written in the lease table.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The shard the lease is for.
    pub fn shard_id(&self) -> ShardId {
        ShardId::from(self.text.get(self.shard_at..).unwrap_or(&self.text))
    }

    /// The stream identifier (`account:streamName:creationEpoch`) of a
    /// multi-stream key; `None` for a single-stream key.
    pub fn stream_identifier(&self) -> Option<&str> {
        match self.shard_at {
            0 => None,
            at => self.text.get(..at - 1),
        }
    }

    /// The stream of a multi-stream key, parsed; `None` for a single-stream
    /// key (or, never for a key this type parsed, a malformed prefix).
    pub fn stream(&self) -> Option<StreamIdentifier> {
        self.stream_identifier()
            .and_then(|text| StreamIdentifier::parse(text).ok())
    }

    /// The key of another shard's lease in the same key space (a parent's,
    /// a child's).
    pub fn sibling(&self, shard: &ShardId) -> Self {
        match self.stream_identifier() {
            Some(stream) => Self {
                text: format!("{stream}:{shard}"),
                shard_at: self.shard_at,
            },
            None => Self::for_shard(shard),
        }
    }
}

impl From<&ShardId> for LeaseKey {
    fn from(shard: &ShardId) -> Self {
        Self::for_shard(shard)
    }
}

impl FromStr for LeaseKey {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Self::parse(text)
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for LeaseKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for LeaseKey {}

impl PartialOrd for LeaseKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LeaseKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

/// Hashes as its text, as `Borrow<str>` requires.
impl Hash for LeaseKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl Borrow<str> for LeaseKey {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl PartialEq<str> for LeaseKey {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for LeaseKey {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_stream_keys_are_shard_ids() {
        let key = LeaseKey::parse("shardId-000000000007").unwrap();
        assert_eq!(key.shard_id(), ShardId::from("shardId-000000000007"));
        assert_eq!(key.stream_identifier(), None);
        assert_eq!(
            key.sibling(&ShardId::from("shardId-000000000001")),
            "shardId-000000000001"
        );
        assert_eq!(
            LeaseKey::for_shard(&ShardId::from("shardId-000000000007")),
            key
        );
    }

    #[test]
    fn multi_stream_keys_have_four_parts() {
        let key = LeaseKey::parse("123:orders:170:shardId-000000000003").unwrap();
        assert_eq!(key.shard_id(), ShardId::from("shardId-000000000003"));
        assert_eq!(key.stream_identifier(), Some("123:orders:170"));
        let parent = key.sibling(&ShardId::from("shardId-000000000001"));
        assert_eq!(parent, "123:orders:170:shardId-000000000001");
        let stream = key.stream().unwrap();
        assert_eq!(
            LeaseKey::for_stream_shard(&stream, &ShardId::from("shardId-000000000001")),
            parent
        );
        assert_eq!(parent.shard_id(), ShardId::from("shardId-000000000001"));
        assert_eq!(parent.stream_identifier(), Some("123:orders:170"));
    }

    #[test]
    fn malformed_keys_are_refused_with_the_key_named() {
        for bad in [
            "",
            "a:b",
            "a:b:c",
            "1:orders:x:shardId-1",
            "1::2:shardId-1",
            "1:s:2:",
            "a:b:1:c:d",
        ] {
            match LeaseKey::parse(bad) {
                Err(Error::InvalidInput(message)) => {
                    assert!(message.contains(&format!("{bad:?}")), "{message}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn keys_compare_and_hash_as_their_text() {
        use std::collections::HashSet;
        let set: HashSet<LeaseKey> = [LeaseKey::parse("shardId-1").unwrap()].into();
        assert!(set.contains("shardId-1"));
        let mut keys = [
            LeaseKey::parse("shardId-2").unwrap(),
            LeaseKey::parse("shardId-10").unwrap(),
        ];
        keys.sort();
        assert_eq!(keys[0], "shardId-10");
    }
}
