//! etcd's Range: revision checks, scan, filters, sort, limit, count.
//! Mirrors etcd 3.4 `etcdserver/apply.go: applyRange` and `mvcc/kvstore_txn.go: rangeKeys`.

use std::cmp::Ordering;

use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::RangeRequest;
use cairn_proto::mvccpb::KeyValue;

use super::codec::{key_range, KeyBounds};
use super::{Error, KvRead, Result};

/// The outcome of a Range, before the API adds the response header.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the read revision, before limit and min/max filters.
    pub count: i64,
    /// True when `limit` cut the result.
    pub more: bool,
    /// The store's current revision (etcd answers with it even for historical reads).
    pub revision: i64,
}

/// Resolves the revision a read targets: 0 or less means current.
pub(crate) fn read_revision(reader: &dyn KvRead, requested: i64) -> Result<i64> {
    let current = reader.current_revision();
    if requested > current {
        return Err(Error::FutureRevision);
    }
    let rev = if requested <= 0 { current } else { requested };
    if rev < reader.compact_revision() {
        return Err(Error::Compacted);
    }
    Ok(rev)
}

/// Visits the keys of `bounds` visible at `rev` (the latest index when `rev` is current).
pub(crate) fn scan_at(
    reader: &dyn KvRead,
    bounds: KeyBounds,
    rev: i64,
    visit: &mut dyn FnMut(KeyValue) -> bool,
) -> Result<()> {
    if rev == reader.current_revision() {
        reader.scan_latest(bounds, visit)
    } else {
        reader.scan_history(bounds, rev, visit)
    }
}

pub(crate) fn range(reader: &dyn KvRead, req: &RangeRequest) -> Result<RangeResult> {
    let rev = read_revision(reader, req.revision)?;
    let mut result = RangeResult {
        revision: reader.current_revision(),
        ..RangeResult::default()
    };
    let Some(bounds) = key_range(&req.key, &req.range_end) else {
        return Ok(result);
    };
    let has_filters = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let mut sort_order = req.sort_order();
    let sort_target = req.sort_target();
    if sort_target != SortTarget::Key && sort_order == SortOrder::None {
        sort_order = SortOrder::Ascend;
    }
    // etcd fetches everything when it must sort or filter, and one extra key otherwise to learn `more`.
    let fetch_all = req.sort_order() != SortOrder::None || has_filters;
    let fetch_max = if req.limit > 0 && !fetch_all && !req.count_only {
        // Saturating: a limit of i64::MAX is "no limit", not an overflow.
        usize::try_from(req.limit).map_or(usize::MAX, |l| l.saturating_add(1))
    } else {
        usize::MAX
    };
    let count_only = req.count_only;
    scan_at(reader, bounds, rev, &mut |kv| {
        result.count += 1;
        if !count_only && result.kvs.len() < fetch_max {
            result.kvs.push(kv);
        }
        true
    })?;
    if has_filters {
        result.kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    if sort_order != SortOrder::None {
        let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        // Stable, so that ties stay in key order as with etcd's sort of a key-ordered slice.
        match sort_order {
            SortOrder::Descend => result.kvs.sort_by(|a, b| by(b, a)),
            _ => result.kvs.sort_by(by),
        }
    }
    if req.limit > 0 && result.kvs.len() > req.limit as usize {
        result.kvs.truncate(req.limit as usize);
        result.more = true;
    }
    if req.keys_only {
        for kv in &mut result.kvs {
            kv.value = Default::default();
        }
    }
    Ok(result)
}
