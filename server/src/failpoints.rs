//! Deliberate bugs, for the consistency harness's self-tests (issue 8): `cairn-jepsen` must catch
//! each of them. They exist only in a build with the `failpoints` feature (`cargo build -p
//! cairn-server --features failpoints`), and only the ones named in `CAIRN_FAILPOINTS`
//! (comma-separated) at start are on. Without the feature [`active`] is the constant `false`, so
//! the code behind it compiles away.

use std::fmt;

/// One deliberate bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A put is acknowledged as soon as it is proposed, before raft commits it: a leader cut
    /// off from the majority acknowledges writes that are then lost.
    AckBeforeCommit,
    /// Linearizable reads skip the ReadIndex barrier: a partitioned old leader serves stale reads.
    ReadWithoutReadIndex,
    /// Every 25th revision's events are not delivered to watchers.
    DropWatchEvent,
    /// The raft log is never synced: entries count as durable, and their acks leave, once they
    /// are written to the OS. A crash that loses the page cache loses acknowledged writes.
    AckBeforeFsync,
    /// The write request at every 20th raft index takes the revision of the write before it:
    /// two writes share a revision.
    ReuseRevision,
}

impl Bug {
    const ALL: [Bug; 5] = [
        Bug::AckBeforeCommit,
        Bug::ReadWithoutReadIndex,
        Bug::DropWatchEvent,
        Bug::AckBeforeFsync,
        Bug::ReuseRevision,
    ];

    fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::ReadWithoutReadIndex => "read-without-read-index",
            Bug::DropWatchEvent => "drop-watch-event",
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::ReuseRevision => "reuse-revision",
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The bugs `list` (comma-separated names) switches on; an unknown name is an error.
pub fn parse(list: &str) -> Result<Vec<Bug>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            Bug::ALL
                .into_iter()
                .find(|b| b.name() == name)
                .ok_or_else(|| format!("unknown failpoint {name:?}"))
        })
        .collect()
}

/// Whether `bug` is switched on in this process.
#[cfg(feature = "failpoints")]
pub fn active(bug: Bug) -> bool {
    static ON: std::sync::OnceLock<Vec<Bug>> = std::sync::OnceLock::new();
    ON.get_or_init(|| {
        let list = std::env::var("CAIRN_FAILPOINTS").unwrap_or_default();
        let bugs = parse(&list).unwrap_or_else(|e| panic!("CAIRN_FAILPOINTS: {e}"));
        for bug in &bugs {
            tracing::warn!(%bug, "failpoint on: this member is deliberately broken");
        }
        bugs
    })
    .contains(&bug)
}

/// Whether `bug` is switched on in this process: never, in a build without `failpoints`.
#[cfg(not(feature = "failpoints"))]
pub fn active(_: Bug) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        assert_eq!(
            parse("ack-before-commit, drop-watch-event").unwrap(),
            vec![Bug::AckBeforeCommit, Bug::DropWatchEvent]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert!(parse("read-without-read-index,nope").is_err());
        for bug in Bug::ALL {
            assert_eq!(parse(&bug.to_string()).unwrap(), vec![bug]);
        }
    }
}
