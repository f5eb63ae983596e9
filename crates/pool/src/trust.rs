//! How a pool keeps one person from making a quorum (DESIGN §4, issue 16):
//! pure rules, applied by the store when it leases replicas and judges
//! results.
//!
//! - **Spread.** Replicas of one task go to devices that share no
//!   enrollment token, no organisation and no network (the source
//!   address's /24 for IPv4, /48 for IPv6): three laptops on one desk, or a
//!   hundred virtual machines from one token, hold at most one replica of a
//!   task between them.
//! - **Earned trust.** Where a job's quorum is one result, that result
//!   counts alone only from a device that has earned it: its first
//!   `checked_results` results are each confirmed by a second device, and
//!   every result of it that disagreed with a quorum costs it
//!   [`DISAGREEMENT_COST`] more confirmed ones.

use std::net::IpAddr;

/// Confirmed results a device owes for each of its results that disagreed with a quorum.
pub const DISAGREEMENT_COST: u64 = 10;

/// Which shared things keep two devices off the replicas of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    pub token: bool,
    pub org: bool,
    pub network: bool,
}

impl Spread {
    pub const ALL: Self = Self { token: true, org: true, network: true };
    pub const NONE: Self = Self { token: false, org: false, network: false };

    /// `token,org,network` (any of them), or `none`.
    pub fn parse(text: &str) -> Result<Self, BadSpread> {
        let mut spread = Self::NONE;
        for part in text.split(',').map(str::trim) {
            match part {
                "token" => spread.token = true,
                "org" => spread.org = true,
                "network" => spread.network = true,
                "none" if text.trim() == "none" => {}
                other => return Err(BadSpread(other.to_owned())),
            }
        }
        Ok(spread)
    }
}

/// A `--spread` part that is not one of its words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of token, org, network (or none alone)")]
pub struct BadSpread(pub String);

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<&str> = [(self.token, "token"), (self.org, "org"), (self.network, "network")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        f.write_str(if parts.is_empty() { "none" } else { "" })?;
        f.write_str(&parts.join(","))
    }
}

/// A pool's rules against collusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustRules {
    pub spread: Spread,
    /// The network prefix lengths that make two addresses "one network".
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Results a device must have had confirmed before one counts alone;
    /// 0: every result counts alone (a one-device lab, the demo pool).
    pub checked_results: u64,
}

impl Default for TrustRules {
    /// What `pool serve` uses unless told otherwise.
    fn default() -> Self {
        Self { spread: Spread::ALL, ipv4_prefix: 24, ipv6_prefix: 48, checked_results: 3 }
    }
}

impl TrustRules {
    /// For a pool whose devices are all one person's (the demo, a lab):
    /// nothing to collude against.
    pub const fn single_owner() -> Self {
        Self { spread: Spread::NONE, ipv4_prefix: 24, ipv6_prefix: 48, checked_results: 0 }
    }

    /// The network an address belongs to, as stored with each replica.
    pub fn network_of(&self, addr: IpAddr) -> String {
        match addr.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & mask32(self.ipv4_prefix);
                format!("{}/{}", std::net::Ipv4Addr::from(bits), self.ipv4_prefix.min(32))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & mask128(self.ipv6_prefix);
                format!("{}/{}", std::net::Ipv6Addr::from(bits), self.ipv6_prefix.min(128))
            }
        }
    }

    /// Whether a device with this record may have one of its results count alone.
    pub fn counts_alone(&self, valid: u64, invalid: u64) -> bool {
        self.checked_results == 0 || valid >= self.checked_results + DISAGREEMENT_COST * invalid
    }
}

fn mask32(prefix: u8) -> u32 {
    match prefix.min(32) {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

fn mask128(prefix: u8) -> u128 {
    match prefix.min(128) {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p)),
    }
}

/// One reported result, as the quorum sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote<V> {
    pub device_id: i64,
    /// What must agree: the output hash (and fuel, for metered jobs).
    pub value: V,
}

/// The value a quorum agrees on, if one does: at least `quorum` equal
/// votes, and, where that is one vote alone, from a device that
/// `counts_alone`.
pub fn quorum_value<V: PartialEq + Clone>(
    votes: &[Vote<V>],
    quorum: u32,
    counts_alone: impl Fn(i64) -> bool,
) -> Option<V> {
    votes.iter().find_map(|v| {
        let agreeing: Vec<&Vote<V>> = votes.iter().filter(|o| o.value == v.value).collect();
        let enough = agreeing.len() as u32 >= quorum.max(1);
        let trusted = agreeing.len() >= 2 || agreeing.iter().all(|a| counts_alone(a.device_id));
        (enough && trusted).then(|| v.value.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_parses_and_names_a_bad_part() {
        assert_eq!(Spread::parse("token,org,network"), Ok(Spread::ALL));
        assert_eq!(Spread::parse("none"), Ok(Spread::NONE));
        assert_eq!(Spread::parse("token"), Ok(Spread { token: true, org: false, network: false }));
        assert!(Spread::parse("token,ip").unwrap_err().to_string().contains("\"ip\""));
        assert!(Spread::parse("none,token").is_err());
        assert_eq!(Spread::ALL.to_string(), "token,org,network");
        assert_eq!(Spread::NONE.to_string(), "none");
    }

    #[test]
    fn networks_are_prefixes() {
        let rules = TrustRules::default();
        let net = |a: &str| rules.network_of(a.parse().unwrap());
        assert_eq!(net("192.0.2.17"), "192.0.2.0/24");
        assert_eq!(net("192.0.2.200"), net("192.0.2.1"));
        assert_ne!(net("192.0.3.1"), net("192.0.2.1"));
        assert_eq!(net("::ffff:192.0.2.9"), "192.0.2.0/24", "IPv4-mapped addresses are IPv4");
        assert_eq!(net("2001:db8:1:2::5"), "2001:db8:1::/48");
        assert_eq!(net("2001:db8:1:ffff::1"), net("2001:db8:1:2::5"));
        assert_ne!(net("2001:db8:2::1"), net("2001:db8:1::1"));
        let wide = TrustRules { ipv4_prefix: 16, ipv6_prefix: 0, ..rules };
        assert_eq!(wide.network_of("10.1.2.3".parse().unwrap()), "10.1.0.0/16");
        assert_eq!(wide.network_of("2001:db8::1".parse().unwrap()), "::/0");
    }

    #[test]
    fn trust_is_earned_and_lost() {
        let rules = TrustRules::default();
        assert!(!rules.counts_alone(0, 0), "a new device");
        assert!(!rules.counts_alone(2, 0));
        assert!(rules.counts_alone(3, 0));
        assert!(!rules.counts_alone(12, 1), "one disagreement costs ten more");
        assert!(rules.counts_alone(13, 1));
        assert!(TrustRules::single_owner().counts_alone(0, 5));
    }

    #[test]
    fn one_vote_counts_alone_only_from_a_trusted_device() {
        let vote = |device_id, value: &'static str| Vote { device_id, value };
        let trusted = |d: i64| d == 1;
        assert_eq!(quorum_value(&[vote(1, "a")], 1, trusted), Some("a"));
        assert_eq!(quorum_value(&[vote(2, "a")], 1, trusted), None, "a new device is checked");
        assert_eq!(quorum_value(&[vote(2, "a"), vote(3, "a")], 1, trusted), Some("a"), "two agree");
        assert_eq!(quorum_value(&[vote(2, "b"), vote(1, "a")], 1, trusted), Some("a"), "the trusted one wins");
        assert_eq!(quorum_value(&[vote(2, "b"), vote(3, "a")], 1, trusted), None, "two untrusted disagree");
        assert_eq!(quorum_value(&[vote(1, "a"), vote(2, "b")], 2, trusted), None, "quorum 2 needs two");
        assert_eq!(quorum_value(&[vote(2, "a"), vote(3, "b"), vote(4, "a")], 2, |_| false), Some("a"));
    }
}
