//! The identifier of a stream in a multi-stream application.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A stream as the Java KCL's multi-stream mode names it:
/// `account:streamName:creationEpoch`, the account id, the stream's name and
/// the second it was created (so a stream deleted and created again under
/// the same name is another stream, with other leases).
///
/// It is the first three parts of every lease key of the stream
/// ([`LeaseKey::for_stream_shard`](super::LeaseKey::for_stream_shard)) and
/// the value of the lease items' `streamName` attribute.
///
/// ```
/// use rkcl::model::StreamIdentifier;
///
/// let id: StreamIdentifier = "123456789012:orders:1700000000".parse()?;
/// assert_eq!(id.name(), "orders");
/// assert_eq!(
///     id.arn("eu-west-1"),
///     "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"
/// );
/// let from_arn =
///     StreamIdentifier::from_arn("arn:aws:kinesis:eu-west-1:123456789012:stream/orders", 1_700_000_000)?;
/// assert_eq!(from_arn, id);
/// # Ok::<(), rkcl::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamIdentifier {
    account: String,
    name: String,
    creation_epoch: u64,
}

impl StreamIdentifier {
    /// An identifier from its parts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the account or the name is empty or holds
    /// a colon.
    pub fn new(
        account: impl Into<String>,
        name: impl Into<String>,
        creation_epoch: u64,
    ) -> Result<Self, Error> {
        let (account, name) = (account.into(), name.into());
        for (what, part) in [("account", &account), ("stream name", &name)] {
            if part.is_empty() || part.contains(':') {
                return Err(Error::InvalidInput(format!(
                    "{part:?} is not a valid {what} for a stream identifier"
                )));
            }
        }
        Ok(Self {
            account,
            name,
            creation_epoch,
        })
    }

    /// Parses `account:streamName:creationEpoch`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the text when it does not have three
    /// non-empty parts with a numeric creation epoch.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let invalid = || {
            Error::InvalidInput(format!(
                "{text:?} is not a stream identifier: expected account:streamName:creationEpoch"
            ))
        };
        let mut parts = text.split(':');
        let (Some(account), Some(name), Some(epoch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let epoch = epoch.parse::<u64>().map_err(|_| invalid())?;
        Self::new(account, name, epoch).map_err(|_| invalid())
    }

    /// The identifier of the stream with this ARN
    /// (`arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`), created at
    /// `creation_epoch` (seconds since 1970, as DescribeStreamSummary says).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the text is not a Kinesis stream ARN.
    pub fn from_arn(arn: &str, creation_epoch: u64) -> Result<Self, Error> {
        let invalid = || Error::InvalidInput(format!("{arn:?} is not a Kinesis stream ARN"));
        let mut parts = arn.splitn(6, ':');
        let (
            Some("arn"),
            Some(_partition),
            Some("kinesis"),
            Some(_region),
            Some(account),
            Some(resource),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(invalid());
        };
        let name = resource.strip_prefix("stream/").ok_or_else(invalid)?;
        Self::new(account, name, creation_epoch).map_err(|_| invalid())
    }

    /// The account id.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the stream was created, in seconds since 1970.
    pub fn creation_epoch(&self) -> u64 {
        self.creation_epoch
    }

    /// The stream's ARN in `region` (the partition follows from the region:
    /// `aws-cn` for `cn-*`, `aws-us-gov` for `us-gov-*`, else `aws`).
    pub fn arn(&self, region: &str) -> String {
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        format!(
            "arn:{partition}:kinesis:{region}:{}:stream/{}",
            self.account, self.name
        )
    }
}

impl fmt::Display for StreamIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.account, self.name, self.creation_epoch)
    }
}

impl FromStr for StreamIdentifier {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_round_trip_through_text() {
        let id = StreamIdentifier::parse("000000000000:orders-eu:1700000123").unwrap();
        assert_eq!(id.account(), "000000000000");
        assert_eq!(id.name(), "orders-eu");
        assert_eq!(id.creation_epoch(), 1_700_000_123);
        assert_eq!(id.to_string(), "000000000000:orders-eu:1700000123");
    }

    #[test]
    fn malformed_identifiers_are_refused_naming_the_text() {
        for bad in ["", "a:b", "a:b:c", "a::1", ":b:1", "a:b:1:d", "a:b:-1"] {
            match StreamIdentifier::parse(bad) {
                Err(Error::InvalidInput(message)) => {
                    assert!(message.contains(&format!("{bad:?}")), "{message}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn arns_give_the_account_and_name_and_come_back_per_partition() {
        let id = StreamIdentifier::from_arn(
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b_c",
            5,
        )
        .unwrap();
        assert_eq!(id.to_string(), "123456789012:a.b_c:5");
        assert_eq!(
            id.arn("cn-north-1"),
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b_c"
        );
        assert!(id.arn("us-gov-west-1").starts_with("arn:aws-us-gov:"));
        for bad in [
            "orders",
            "arn:aws:sqs:eu-west-1:1:queue",
            "arn:aws:kinesis:eu-west-1:1:consumer/x",
            "arn:aws:kinesis:eu-west-1::stream/x",
        ] {
            assert!(StreamIdentifier::from_arn(bad, 1).is_err(), "{bad}");
        }
    }
}
