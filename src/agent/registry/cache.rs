//! The record cache: the services an agent holds in memory, those it owns and the copies it
//! keeps as a replica, bounded both in records and in units (instances and tombstones), so
//! that an agent's memory stays bounded whatever its services hold. A record this node owns
//! that does not fit makes room by dropping the least recently used records, copies first; a
//! dropped record is read from the store again at its next use.

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
    /// When it was last cached or read, on the cache's own tick.
    used: u64,
}

/// What [`RecordCache::put`] did.
pub(super) struct Placed {
    /// The record is cached.
    pub(super) cached: bool,
    /// Records dropped to make room for it.
    pub(super) evicted: usize,
    /// The records no longer cached (the older version of the service, those dropped for
    /// room): the caller drops them once it has let go of the cache's lock, since freeing a
    /// record's nodes is work that nobody needs to wait for.
    pub(super) released: Vec<Arc<Record>>,
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
    /// Counts every read and every record cached: the age of [`Cached::used`].
    tick: u64,
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
            tick: 0,
        }
    }

    /// The cached record of `service`, now the most recently used.
    pub(super) fn get(&mut self, service: &str) -> Option<&Arc<Record>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(service).map(|c| {
            c.used = tick;
            &c.rec
        })
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

    /// Forgets `service`'s record, and returns it (for the caller to drop outside its lock:
    /// the last reference to a record frees every node only it held).
    pub(super) fn remove(&mut self, service: &str) -> Option<Arc<Record>> {
        let c = self.map.remove(service)?;
        self.units -= c.units;
        if c.copy {
            self.copies -= 1;
            self.copy_units -= c.units;
        }
        Some(c.rec)
    }

    /// Caches `rec` in place of what was cached of its service, if it fits. An owned record
    /// (`copy` false) makes room by dropping the least recently used records, copies before
    /// owned ones, and a little more than it needs (a thirty-second of each bound), so that a
    /// node whose services outgrow the cache does not sort it at every load; it drops nothing
    /// when it would not fit in the empty cache. A copy never drops anything. A record that is
    /// not cached still has the older one of its service dropped: the cache never holds a
    /// record older than the store's.
    pub(super) fn put(&mut self, rec: Arc<Record>, copy: bool) -> Placed {
        // The usual write: the service's older record is cached as the same kind and the new
        // one fits in its place. Replaced where it is, without taking its entry out and making
        // a new one (a lookup and a copy of the name less).
        let units = weight(&rec);
        let RecordCache {
            map,
            units: total,
            copy_units,
            max_units,
            tick,
            ..
        } = self;
        if let Some(c) = map.get_mut(rec.service.as_str()) {
            if c.copy == copy && *total - c.units + units <= *max_units {
                *total = *total - c.units + units;
                if copy {
                    *copy_units = *copy_units - c.units + units;
                }
                *tick += 1;
                c.units = units;
                c.used = *tick;
                let old = std::mem::replace(&mut c.rec, rec);
                return Placed {
                    cached: true,
                    evicted: 0,
                    released: vec![old],
                };
            }
        }
        let mut released: Vec<Arc<Record>> = self.remove(&rec.service).into_iter().collect();
        let mut evicted = 0;
        if !copy && !self.fits(units) && self.fits_after(0, 0, units) {
            let before = released.len();
            self.evict_for(units, &mut released);
            evicted = released.len() - before;
        }
        if !self.fits(units) {
            return Placed {
                cached: false,
                evicted,
                released,
            };
        }
        self.units += units;
        if copy {
            self.copies += 1;
            self.copy_units += units;
        }
        self.tick += 1;
        let used = self.tick;
        self.map.insert(
            rec.service.clone(),
            Cached {
                rec,
                copy,
                units,
                used,
            },
        );
        Placed {
            cached: true,
            evicted,
            released,
        }
    }

    /// Whether a record of `units` fits as the cache stands.
    fn fits(&self, units: usize) -> bool {
        self.fits_after(self.map.len(), self.units, units)
    }

    /// Whether a record of `units` fits beside `records` records holding `held` units.
    fn fits_after(&self, records: usize, held: usize, units: usize) -> bool {
        records < self.max_records && held + units <= self.max_units
    }

    /// Drop the least recently used records, copies first, until a record of `units` fits
    /// with a thirty-second of each bound to spare, or nothing is left; the records dropped
    /// go to `released`. Only the oldest sixteenth is sorted unless more must go, so that a
    /// cache of a quarter of a million records is not sorted whole under its lock.
    fn evict_for(&mut self, units: usize, released: &mut Vec<Arc<Record>>) {
        let spare_records = self.max_records / 32;
        let spare_units = self.max_units / 32;
        let age = |&(owned, used, _, _): &(bool, u64, &String, usize)| (owned, used);
        let mut order: Vec<(bool, u64, &String, usize)> = self
            .map
            .iter()
            .map(|(service, c)| (!c.copy, c.used, service, c.units))
            .collect();
        let mut sorted = (order.len() / 16 + 1).min(order.len());
        if sorted < order.len() {
            order.select_nth_unstable_by_key(sorted, age);
        }
        order[..sorted].sort_unstable_by_key(age);
        let (mut records, mut held) = (self.map.len(), self.units);
        let mut victims = Vec::new();
        for i in 0..order.len() {
            if self.fits_after(records + spare_records, held + spare_units, units) {
                break;
            }
            if i == sorted {
                order[sorted..].sort_unstable_by_key(age);
                sorted = order.len();
            }
            let (_, _, service, weight) = order[i];
            victims.push(service.clone());
            records -= 1;
            held -= weight;
        }
        for service in &victims {
            released.extend(self.remove(service));
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

    /// The services cached, in name order.
    fn cached(cache: &RecordCache) -> Vec<&str> {
        let mut names: Vec<&str> = cache.map.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn the_cache_stays_within_its_units_and_its_records() {
        // Weights: a record of n instances weighs n + 3.
        let mut cache = RecordCache::new(3, 24);
        assert!(cache.put(record("a", 9), false).cached);
        assert!(cache.put(record("b", 9), false).cached);
        assert_eq!(cache.size(), (2, 24));
        // No unit left: the least recently used goes.
        let placed = cache.put(record("c", 0), false);
        assert_eq!((placed.cached, placed.evicted), (true, 1));
        assert_eq!(cached(&cache), ["b", "c"]);
        assert_eq!(cache.size(), (2, 15));
        assert!(cache.put(record("d", 0), false).cached);
        assert_eq!(cache.size(), (3, 18));
        // Three records at most: one more drops the oldest.
        let placed = cache.put(record("e", 0), false);
        assert_eq!((placed.cached, placed.evicted), (true, 1));
        assert_eq!(cached(&cache), ["c", "d", "e"]);
        assert_eq!(cache.size(), (3, 9));
    }

    #[test]
    fn the_records_dropped_for_room_are_the_least_recently_used() {
        let mut cache = RecordCache::new(8, 40);
        for name in ["a", "b", "c", "d"] {
            assert!(cache.put(record(name, 5), false).cached);
        }
        assert_eq!(cache.size(), (4, 32));
        // "a" and "b", the oldest cached, are read: "c" and "d" are now the oldest used.
        assert!(cache.get("a").is_some());
        assert!(cache.get("b").is_some());
        assert!(cache.get("nothing").is_none());
        // 16 units needed (and one to spare, a thirty-second of 40), 8 free: two records of 8
        // go, the two least recently used.
        let placed = cache.put(record("e", 13), false);
        assert_eq!((placed.cached, placed.evicted), (true, 2));
        assert_eq!(cached(&cache), ["a", "b", "e"]);
        // Writing a record again (caching its new version) counts as a use.
        assert!(cache.put(record("a", 5), false).cached);
        // 15 units, 8 free and one to spare: one record of 8 goes.
        let placed = cache.put(record("f", 12), false);
        assert_eq!((placed.cached, placed.evicted), (true, 1));
        assert_eq!(cached(&cache), ["a", "e", "f"]);
    }

    #[test]
    fn the_oldest_are_found_among_many_whether_or_not_the_oldest_sixteenth_is_enough() {
        // 200 records of weight 3, read in a shuffled order: the least recently read go.
        let mut cache = RecordCache::new(1000, 600);
        for i in 0..200 {
            assert!(cache.put(record(&format!("s{i:03}"), 0), false).cached);
        }
        let mut order: Vec<usize> = (0..200).collect();
        for i in 0..order.len() {
            order.swap(i, (i * 7919 + 13) % 200);
        }
        for &i in &order {
            assert!(cache.get(&format!("s{i:03}")).is_some());
        }
        // 600 units held, 18 spare: 30 units (10 records) need 16 records to go, more than
        // the sixteenth (13) sorted first.
        let placed = cache.put(record("big", 27), false);
        assert_eq!((placed.cached, placed.evicted), (true, 16));
        for (rank, &i) in order.iter().enumerate() {
            let name = format!("s{i:03}");
            assert_eq!(
                cache.get(&name).is_none(),
                rank < 16,
                "{name}, read {rank}th"
            );
        }
    }

    #[test]
    fn a_cache_past_its_bounds_drops_a_little_more_than_it_needs() {
        // A thirty-second of each bound to spare: 2 records and 4 units here.
        let mut cache = RecordCache::new(64, 128);
        for i in 0..16 {
            assert!(cache.put(record(&format!("s{i:02}"), 5), false).cached);
        }
        assert_eq!(cache.size(), (16, 128));
        // One record of 8 needs one to go; the spare takes one more.
        let placed = cache.put(record("new", 5), false);
        assert_eq!((placed.cached, placed.evicted), (true, 2));
        assert_eq!(cache.size(), (15, 120));
        assert!(cache.get("s00").is_none() && cache.get("s01").is_none());
        // The next one fits without dropping anything.
        let placed = cache.put(record("next", 1), false);
        assert_eq!((placed.cached, placed.evicted), (true, 0));
    }

    #[test]
    fn a_record_that_outgrows_its_room_leaves_no_older_copy_behind() {
        let mut cache = RecordCache::new(8, 24);
        assert!(cache.put(record("a", 5), false).cached);
        assert!(cache.put(record("b", 5), true).cached);
        // The copy "b" grew past what is left: it is no longer cached, not cached as it was
        // (a copy drops nothing to make room).
        assert!(!cache.put(record("b", 14), true).cached);
        assert!(cache.get("b").is_none());
        assert_eq!(cache.size(), (1, 8));
        // A record too large for the empty cache drops nothing, and is not cached either.
        assert!(!cache.put(record("a", 22), false).cached);
        assert!(cache.get("a").is_none());
        assert_eq!(cache.size(), (0, 0));
        // Replacing a record counts its new weight only.
        assert!(cache.put(record("b", 13), false).cached);
        assert_eq!(cache.size(), (1, 16));
    }

    #[test]
    fn a_newer_record_takes_the_older_ones_place_and_its_weight() {
        let mut cache = RecordCache::new(2, 40);
        assert!(cache.put(record("a", 5), false).cached);
        assert!(cache.put(record("c", 5), true).cached);
        assert_eq!(cache.size(), (2, 16));
        let older = cache.get("a").cloned().unwrap();
        let placed = cache.put(record("a", 9), false);
        assert_eq!((placed.cached, placed.evicted), (true, 0));
        assert!(
            placed.released.len() == 1 && Arc::ptr_eq(&placed.released[0], &older),
            "the older record is handed back to be freed"
        );
        assert_eq!(cache.size(), (2, 20));
        // A copy replaced by a copy: its units counted as a copy's.
        assert!(cache.put(record("c", 1), true).cached);
        assert_eq!(
            (cache.size(), cache.copies, cache.copy_units),
            ((2, 16), 1, 4)
        );
        // The copy became this node's own: counted as owned from now on.
        assert!(cache.put(record("c", 1), false).cached);
        assert_eq!(
            (cache.size(), cache.copies, cache.copy_units),
            ((2, 16), 0, 0)
        );
        // Replaced in place, a record counts as just used: "a", replaced after "c", stays
        // when a new record needs room.
        assert!(cache.put(record("a", 9), false).cached);
        let placed = cache.put(record("b", 0), false);
        assert_eq!((placed.cached, placed.evicted), (true, 1));
        assert_eq!(cached(&cache), ["a", "b"]);
        // A newer record that does not fit: the older one is dropped all the same.
        let placed = cache.put(record("a", 40), false);
        assert!(!placed.cached && placed.released.len() == 1);
        assert_eq!(cached(&cache), ["b"]);
        assert_eq!(cache.size(), (1, 3));
    }

    #[test]
    fn an_owned_record_makes_room_by_dropping_copies_and_a_copy_drops_nothing() {
        let mut cache = RecordCache::new(8, 24);
        assert!(cache.put(record("copy1", 5), true).cached);
        assert!(cache.put(record("copy2", 5), true).cached);
        assert!(cache.put(record("owned", 5), false).cached);
        assert!(
            !cache.has_room_for_copy(),
            "copies hold more than half the units"
        );
        assert!(!cache.put(record("copy3", 9), true).cached);
        assert_eq!(cache.size(), (3, 24));
        // The owned record, used last of the three, would not be the first to go anyway;
        // read the copies since, and still a copy goes first, the least recently used.
        assert!(cache.get("copy2").is_some());
        assert!(cache.get("copy1").is_some());
        let placed = cache.put(record("big", 5), false);
        assert_eq!(
            (placed.cached, placed.evicted),
            (true, 1),
            "as many as needed"
        );
        assert_eq!(cached(&cache), ["big", "copy1", "owned"]);
        assert_eq!(cache.size(), (3, 24));
        // Dropping every copy would not make room for this one: nothing is dropped for it.
        assert!(!cache.put(record("huge", 30), false).cached);
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
