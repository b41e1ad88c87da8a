//! 160-bit identifiers on the Chord ring and the interval arithmetic around them.

use std::cell::RefCell;
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// The number of bits of an identifier (SHA-1).
pub const BITS: usize = 160;

/// Slots of a thread's [`KeyMemo`].
const MEMO_SLOTS: usize = 1024;

thread_local! {
    static KEY_MEMO: RefCell<KeyMemo> = RefCell::new(KeyMemo::new());
}

/// The SHA-1 of the keys a thread hashed last: a look here costs about a tenth of hashing
/// again. Direct-mapped (a key's slot is chosen by a keyed hash, so no crafted names can
/// make them collide on purpose): bounded, never swept, and a key that loses its slot is
/// only hashed again.
struct KeyMemo {
    hasher: RandomState,
    slots: Vec<Option<(Box<str>, Id)>>,
}

impl KeyMemo {
    fn new() -> KeyMemo {
        KeyMemo {
            hasher: RandomState::new(),
            slots: vec![None; MEMO_SLOTS],
        }
    }

    fn id_of(&mut self, key: &str) -> Id {
        let slot = (self.hasher.hash_one(key) % MEMO_SLOTS as u64) as usize;
        let Some(entry) = self.slots.get_mut(slot) else {
            return Id::hash(key.as_bytes());
        };
        match entry {
            Some((held, id)) if **held == *key => *id,
            _ => {
                let id = Id::hash(key.as_bytes());
                *entry = Some((key.into(), id));
                id
            }
        }
    }
}

/// A point on the 2^160 identifier circle: SHA-1 of a node's advertised address or of a key.
///
/// Ordered as a big-endian unsigned integer; "clockwise" means increasing modulo 2^160.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Id(pub [u8; 20]);

impl Id {
    /// The identifier of arbitrary bytes: their SHA-1.
    pub fn hash(bytes: &[u8]) -> Id {
        let digest = Sha1::digest(bytes);
        let mut id = [0u8; 20];
        id.copy_from_slice(&digest);
        Id(id)
    }

    /// The identifier of a key (a service name, or any string passed to `locate`).
    ///
    /// Remembered per thread for the keys hashed last ([`KeyMemo`]): a write hashes its
    /// service's name several times on its way (routing, ownership, the record cache), and a
    /// replica once or twice per batch.
    pub fn of_key(key: &str) -> Id {
        KEY_MEMO
            .try_with(|memo| match memo.try_borrow_mut() {
                Ok(mut memo) => memo.id_of(key),
                Err(_) => Id::hash(key.as_bytes()),
            })
            .unwrap_or_else(|_| Id::hash(key.as_bytes()))
    }

    /// The identifier of a node: SHA-1 of its advertised ring address, exactly as advertised.
    pub fn of_addr(addr: &str) -> Id {
        Id::hash(addr.as_bytes())
    }

    /// 40 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, for tables and logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Parse 40 hex digits.
    pub fn from_hex(s: &str) -> Option<Id> {
        let bytes = hex::decode(s).ok()?;
        let arr: [u8; 20] = bytes.try_into().ok()?;
        Some(Id(arr))
    }

    /// `self + 2^i` modulo 2^160: the start of finger `i`.
    pub fn add_pow2(&self, i: usize) -> Id {
        debug_assert!(i < BITS);
        let mut out = self.0;
        let byte = 19 - i / 8;
        let mut carry = 1u16 << (i % 8);
        let mut idx = byte as isize;
        while carry != 0 && idx >= 0 {
            let sum = out[idx as usize] as u16 + carry;
            out[idx as usize] = sum as u8;
            carry = sum >> 8;
            idx -= 1;
        }
        Id(out)
    }

    /// Clockwise distance from `self` to `other`: `(other - self) mod 2^160`.
    pub fn distance_to(&self, other: &Id) -> Id {
        let mut out = [0u8; 20];
        let mut borrow = 0i16;
        for i in (0..20).rev() {
            let mut d = other.0[i] as i16 - self.0[i] as i16 - borrow;
            if d < 0 {
                d += 256;
                borrow = 1;
            } else {
                borrow = 0;
            }
            out[i] = d as u8;
        }
        Id(out)
    }

    /// This identifier as a fraction of the whole circle, in [0, 1).
    pub fn fraction(&self) -> f64 {
        self.0
            .iter()
            .enumerate()
            .map(|(i, b)| *b as f64 / 256f64.powi(i as i32 + 1))
            .sum()
    }

    /// Whether `self` lies in the open interval `(a, b)` going clockwise. When `a == b` the
    /// interval is the whole circle except `a`.
    pub fn in_open(&self, a: &Id, b: &Id) -> bool {
        match a.cmp(b) {
            std::cmp::Ordering::Less => a < self && self < b,
            std::cmp::Ordering::Greater => self > a || self < b,
            std::cmp::Ordering::Equal => self != a,
        }
    }

    /// Whether `self` lies in the half-open interval `(a, b]` going clockwise. When `a == b` the
    /// interval is the whole circle.
    pub fn in_half_open(&self, a: &Id, b: &Id) -> bool {
        if a < b {
            a < self && self <= b
        } else {
            self > a || self <= b
        }
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.short())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        let mut a = [0u8; 20];
        a[19] = n;
        Id(a)
    }

    #[test]
    fn sha1_of_addr_matches_known_digest() {
        // sha1("abc") is a published test vector.
        assert_eq!(
            Id::of_key("abc").to_hex(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            Id::from_hex(&Id::of_key("abc").to_hex()),
            Some(Id::of_key("abc"))
        );
        assert_eq!(Id::from_hex("xyz"), None);
    }

    #[test]
    fn a_remembered_key_id_is_its_sha1_whatever_shares_its_slot() {
        // Five times as many keys as slots: keys share slots and push each other out.
        let keys: Vec<String> = (0..MEMO_SLOTS * 5).map(|i| format!("svc-{i}")).collect();
        for _ in 0..2 {
            for key in keys.iter().chain(keys.iter().rev()) {
                assert_eq!(Id::of_key(key), Id::hash(key.as_bytes()), "{key}");
            }
        }
        // A key equal to a held one's prefix, or longer, is not taken for it.
        assert_eq!(Id::of_key("svc-1"), Id::hash(b"svc-1"));
        assert_eq!(Id::of_key("svc-"), Id::hash(b"svc-"));
        assert_eq!(Id::of_key("svc-10"), Id::hash(b"svc-10"));
        assert_eq!(Id::of_key(""), Id::hash(b""));
    }

    #[test]
    fn add_pow2_wraps_around_the_circle() {
        assert_eq!(id(1).add_pow2(0), id(2));
        assert_eq!(id(255).add_pow2(0).0[18], 1);
        let max = Id([0xff; 20]);
        assert_eq!(max.add_pow2(0), Id([0; 20]));
        let top = Id([0; 20]).add_pow2(159);
        assert_eq!(top.0[0], 0x80);
    }

    #[test]
    fn intervals_handle_wraparound_and_equal_ends() {
        assert!(id(5).in_open(&id(3), &id(9)));
        assert!(!id(3).in_open(&id(3), &id(9)));
        assert!(!id(9).in_open(&id(3), &id(9)));
        assert!(id(9).in_half_open(&id(3), &id(9)));
        // Wrapping: (200, 10) contains 250 and 2 but not 100.
        assert!(id(250).in_open(&id(200), &id(10)));
        assert!(id(2).in_open(&id(200), &id(10)));
        assert!(!id(100).in_open(&id(200), &id(10)));
        // a == b: open is everything but a, half-open is everything.
        assert!(id(7).in_open(&id(3), &id(3)));
        assert!(!id(3).in_open(&id(3), &id(3)));
        assert!(id(3).in_half_open(&id(3), &id(3)));
    }

    #[test]
    fn distance_is_clockwise_modulo_2_160() {
        assert_eq!(id(3).distance_to(&id(10)), id(7));
        let d = id(10).distance_to(&id(3));
        assert_eq!(d.0[19], 249);
        assert_eq!(d.0[0], 0xff);
        assert!((Id([0; 20]).add_pow2(159).fraction() - 0.5).abs() < 1e-12);
    }
}
