//! The record cache: the services an agent holds in memory, those it owns and the copies it
//! keeps as a replica, bounded both in records and in units (instances and tombstones), so
//! that an agent's memory stays bounded whatever its services hold. What is not cached is read
//! from the store when it is used.

use std::collections::HashMap;
use std::sync::Arc;

use crate::registry::Record;

/// Records cached at most. The units bound is what bounds memory; this one only keeps the
/// map's size sane.
pub(super) const RECORD_CACHE_MAX: usize = 256 * 1024;

/// Units cached at most, over all records: one for each instance, tombstone and policy,
/// and [`RECORD_UNITS`] for each record. A cached instance costs about 1.3 KB
/// (`bench/record_memory.sh`), so this is about 2.7 GB.
pub(super) const RECORD_CACHE_UNITS: usize = 2 << 20;

/// What a record itself counts for against the units bound: its maps, names and the
/// agent's bookkeeping of the service take about 4 KB (3 units) beyond its instances.
const RECORD_UNITS: usize = 3;

/// One cached record.
struct Cached {
    rec: Arc<Record>,
    /// Cached as a copy (the node did not own it then).
    copy: bool,
    /// Its weight when cached ([`weight`]).
    units: usize,
}

/// What counts against the units bound: [`RECORD_UNITS`] for the record, one for each of its
/// units. O(1).
fn weight(rec: &Record) -> usize {
    RECORD_UNITS + rec.units_len()
}

/// Records by service name, within their bounds.
pub(super) struct RecordCache {
    map: HashMap<String, Cached>,
    /// The weights of every cached record, summed.
    units: usize,
    /// How many cached records are copies, and their weights summed.
    copies: usize,
    copy_units: usize,
    max_records: usize,
    max_units: usize,
}

impl RecordCache {
    /// An empty cache holding at most `max_records` records and `max_units` units.
    pub(super) fn new(max_records: usize, max_units: usize) -> RecordCache {
        RecordCache {
            map: HashMap::new(),
            units: 0,
            copies: 0,
            copy_units: 0,
            max_records,
            max_units,
        }
    }

    pub(super) fn get(&self, service: &str) -> Option<&Arc<Record>> {
        self.map.get(service).map(|c| &c.rec)
    }

    /// (records, units) cached.
    pub(super) fn size(&self) -> (usize, usize) {
        (self.map.len(), self.units)
    }

    /// Whether the node may load another copy to merge into: copies loaded so take at most
    /// half of either bound, so that what the node owns (its writes, its discovers) keeps
    /// room, and only while an eighth of the units bound is free, so that the copy loaded
    /// fits (a copy loaded and not cached would be loaded again, a whole prefix scan, at
    /// every batch). (A copy read for another reason, a read standing in for its owner, is
    /// cached within the whole bounds, and dropped first when an owned record needs the
    /// room.)
    pub(super) fn has_room_for_copy(&self) -> bool {
        self.copies < self.max_records / 2
            && self.copy_units < self.max_units / 2
            && self.units + self.max_units / 8 <= self.max_units
    }

    pub(super) fn remove(&mut self, service: &str) {
        if let Some(c) = self.map.remove(service) {
            self.units -= c.units;
            if c.copy {
                self.copies -= 1;
                self.copy_units -= c.units;
            }
        }
    }

    /// Caches `rec` in place of what was cached of its service, if it fits. An owned record
    /// (`copy` false) makes room by dropping copies, when dropping them can make enough; a
    /// copy never drops anything. A record that does not fit is not cached, and the older one
    /// of its service is dropped all the same: the cache never holds a record older than the
    /// store's. Returns whether it was cached.
    pub(super) fn put(&mut self, rec: Arc<Record>, copy: bool) -> bool {
        self.remove(&rec.service);
        let units = weight(&rec);
        let room_without_copies = self.fits_after(
            self.map.len() - self.copies,
            self.units - self.copy_units,
            units,
        );
        if !copy && !self.fits(units) && room_without_copies {
            self.drop_copies_for(units);
        }
        if !self.fits(units) {
            return false;
        }
        self.units += units;
        if copy {
            self.copies += 1;
            self.copy_units += units;
        }
        self.map
            .insert(rec.service.clone(), Cached { rec, copy, units });
        true
    }

    /// Whether a record of `units` fits as the cache stands.
    fn fits(&self, units: usize) -> bool {
        self.fits_after(self.map.len(), self.units, units)
    }

    /// Whether a record of `units` fits beside `records` records holding `held` units.
    fn fits_after(&self, records: usize, held: usize, units: usize) -> bool {
        records < self.max_records && held + units <= self.max_units
    }

    /// Drop copies until a record of `units` fits, or no copy is left.
    fn drop_copies_for(&mut self, units: usize) {
        let mut victims = Vec::new();
        let (mut records, mut held) = (self.map.len(), self.units);
        for (service, c) in &self.map {
            if self.fits_after(records, held, units) {
                break;
            }
            if c.copy {
                victims.push(service.clone());
                records -= 1;
                held -= c.units;
            }
        }
        for service in victims {
            self.remove(&service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::hlc::Hlc;
    use crate::registry::model::RegisterBody;

    /// A record of `service` with `n` instances (weight n + 3).
    fn record(service: &str, n: usize) -> Arc<Record> {
        let mut rec = Record::new(service, None).unwrap();
        let now = chrono::Utc::now();
        for i in 0..n {
            let id = format!("i{i}");
            rec.register(&id, &RegisterBody::new("10.0.0.1", 80), now)
                .unwrap();
            rec.stamp(&id, Hlc::default());
        }
        assert_eq!(weight(&rec), n + RECORD_UNITS);
        Arc::new(rec)
    }

    #[test]
    fn the_cache_stays_within_its_units_and_its_records() {
        // Weights: a record of n instances weighs n + 3.
        let mut cache = RecordCache::new(3, 24);
        assert!(cache.put(record("a", 9), false));
        assert!(cache.put(record("b", 9), false));
        assert_eq!(cache.size(), (2, 24));
        assert!(!cache.put(record("c", 0), false), "no unit left");
        assert!(cache.get("c").is_none());
        cache.remove("b");
        assert_eq!(cache.size(), (1, 12));
        assert!(cache.put(record("c", 0), false));
        assert!(cache.put(record("d", 0), false));
        assert!(!cache.put(record("e", 0), false), "three records at most");
        assert_eq!(cache.size(), (3, 18));
    }

    #[test]
    fn a_record_that_outgrows_its_room_leaves_no_older_copy_behind() {
        let mut cache = RecordCache::new(8, 24);
        assert!(cache.put(record("a", 5), false));
        assert!(cache.put(record("b", 5), false));
        // "a" grew past what is left: it is no longer cached, not cached as it was.
        assert!(!cache.put(record("a", 14), false));
        assert!(cache.get("a").is_none());
        assert_eq!(cache.size(), (1, 8));
        // Replacing a record counts its new weight only.
        assert!(cache.put(record("b", 13), false));
        assert_eq!(cache.size(), (1, 16));
    }

    #[test]
    fn an_owned_record_makes_room_by_dropping_copies_and_a_copy_drops_nothing() {
        let mut cache = RecordCache::new(8, 24);
        assert!(cache.put(record("copy1", 5), true));
        assert!(cache.put(record("copy2", 5), true));
        assert!(cache.put(record("owned", 5), false));
        assert!(
            !cache.has_room_for_copy(),
            "copies hold more than half the units"
        );
        assert!(!cache.put(record("copy3", 9), true));
        assert_eq!(cache.size(), (3, 24));
        assert!(cache.put(record("big", 5), false));
        assert!(cache.get("owned").is_some(), "owned records stay");
        assert!(cache.get("big").is_some());
        assert_eq!(
            ["copy1", "copy2"]
                .iter()
                .filter(|s| cache.get(s).is_some())
                .count(),
            1,
            "one copy dropped, as many as needed"
        );
        assert_eq!(cache.size(), (3, 24));
        // Dropping every copy would not make room for this one: nothing is dropped for it.
        assert!(!cache.put(record("huge", 30), false));
        assert_eq!(cache.size(), (3, 24));
        assert!(
            !cache.has_room_for_copy(),
            "copies hold 8 units, below half, but the cache is full: a copy loaded would not fit"
        );
        cache.remove("big");
        assert!(
            cache.has_room_for_copy(),
            "an eighth of the units is free again"
        );
    }
}
