//! The sync digest: an order-independent fingerprint of who gets paid where, so a payer
//! can prove its copy built from the change feed matches the registry (as Pix DICT's
//! VSync lets a participant prove its cache of keys).
//!
//! **What it covers (algorithm `xor-sha256-v1`).** A *route* is one payout preference
//! that is live: the citizen's default (program key `""`) or one program's preference
//! (the program code), pointing at an account that is VERIFIED, of a citizen whose status
//! is ACTIVE. Each route hashes to
//!
//! ```text
//! SHA-256( citizen_id "\n" program_key "\n" account_id )
//! ```
//!
//! (the 12-digit id, the program code or nothing, the account UUID in lower-case
//! hyphenated form). The digest of a set of routes is the XOR of their hashes (32 zero
//! bytes for none), together with how many there are. XOR makes it independent of order
//! and lets both sides maintain it incrementally: a route that appears or disappears is
//! XORed in or out. A province's digest covers the citizens whose id starts with its
//! code; the whole registry's is the XOR of all provinces'.
//!
//! Cooling-off is not part of it: it is a rule applied at payment time to the
//! preferences the digest covers.

use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// The name of the algorithm above, returned with every digest.
pub const ALGORITHM: &str = "xor-sha256-v1";

/// The XOR of route hashes, and how many routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteDigest {
    pub digest: [u8; 32],
    pub routes: i64,
}

impl RouteDigest {
    /// The digest of one route.
    pub fn route(citizen_id: &str, program_key: &str, account_id: Uuid) -> RouteDigest {
        let mut h = Sha256::new();
        h.update(citizen_id.as_bytes());
        h.update(b"\n");
        h.update(program_key.as_bytes());
        h.update(b"\n");
        h.update(account_id.hyphenated().to_string().as_bytes());
        RouteDigest {
            digest: h.finalize().into(),
            routes: 1,
        }
    }

    /// Adds another set's routes (the sets must not overlap).
    pub fn add(&mut self, other: &RouteDigest) {
        self.xor(&other.digest);
        self.routes += other.routes;
    }

    /// Takes away a set's routes (they must be part of this one).
    pub fn remove(&mut self, other: &RouteDigest) {
        self.xor(&other.digest);
        self.routes -= other.routes;
    }

    fn xor(&mut self, other: &[u8; 32]) {
        self.digest
            .iter_mut()
            .zip(other)
            .for_each(|(a, b)| *a ^= *b);
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0 && self.digest == [0; 32]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// Reads a stored digest.
    pub fn from_hex(hex_digest: &str, routes: i64) -> Option<RouteDigest> {
        let bytes = hex::decode(hex_digest).ok()?;
        Some(RouteDigest {
            digest: bytes.try_into().ok()?,
            routes,
        })
    }
}

/// The province a citizen's digest belongs to: the first three digits of the id.
pub fn province_of(citizen_id: &str) -> &str {
    citizen_id.get(..3).unwrap_or(citizen_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CITIZEN: &str = "001090000001";

    #[test]
    fn the_digest_of_a_set_does_not_depend_on_order_and_removal_undoes_addition() {
        let a = RouteDigest::route(CITIZEN, "", Uuid::from_u128(1));
        let b = RouteDigest::route(CITIZEN, "PENSION", Uuid::from_u128(2));
        let c = RouteDigest::route("079090000002", "", Uuid::from_u128(3));
        let mut forward = RouteDigest::default();
        [a, b, c].iter().for_each(|r| forward.add(r));
        let mut backward = RouteDigest::default();
        [c, b, a].iter().for_each(|r| backward.add(r));
        assert_eq!(forward, backward);
        assert_eq!(forward.routes, 3);
        forward.remove(&b);
        let mut without_b = RouteDigest::default();
        without_b.add(&a);
        without_b.add(&c);
        assert_eq!(forward, without_b);
        forward.remove(&a);
        forward.remove(&c);
        assert!(forward.is_empty());
    }

    #[test]
    fn a_route_hash_binds_citizen_program_and_account() {
        let base = RouteDigest::route(CITIZEN, "", Uuid::from_u128(1));
        assert_ne!(
            base,
            RouteDigest::route(CITIZEN, "PENSION", Uuid::from_u128(1))
        );
        assert_ne!(base, RouteDigest::route(CITIZEN, "", Uuid::from_u128(2)));
        assert_ne!(
            base,
            RouteDigest::route("001090000002", "", Uuid::from_u128(1))
        );
        // The documented formula, computed independently.
        let expected =
            Sha256::digest(format!("{CITIZEN}\n\n{}", Uuid::from_u128(1).hyphenated()).as_bytes());
        assert_eq!(base.digest.as_slice(), expected.as_slice());
    }

    #[test]
    fn stored_digests_round_trip_and_garbage_is_refused() {
        let r = RouteDigest::route(CITIZEN, "", Uuid::from_u128(9));
        assert_eq!(RouteDigest::from_hex(&r.to_hex(), 1), Some(r));
        assert_eq!(RouteDigest::from_hex("zz", 1), None);
        assert_eq!(RouteDigest::from_hex("abcd", 1), None);
        assert_eq!(province_of(CITIZEN), "001");
    }
}
