//! Which watchers does a key concern? An index of watched keys and key ranges whose lookup costs time
//! in proportion to the watchers that match, not to all watchers.
//!
//! Single keys live in a hash map. Ranges live in an interval tree: a treap ordered by (start, end),
//! each node augmented with the greatest end in its subtree, so a stabbing query skips every subtree
//! that ends at or before the key. Watchers of the same key or range share one entry.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// The end of a watched range; `Unbounded` sorts after every key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    Key(Vec<u8>),
    Unbounded,
}

impl End {
    fn is_after(&self, key: &[u8]) -> bool {
        match self {
            End::Key(end) => key < end.as_slice(),
            End::Unbounded => true,
        }
    }
}

/// What one watcher watches: etcd's (key, range_end) once validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Bounds {
    Key(Vec<u8>),
    /// `[start, end)`.
    Range(Vec<u8>, End),
}

impl Bounds {
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            Bounds::Key(k) => k == key,
            Bounds::Range(start, end) => key >= start.as_slice() && end.is_after(key),
        }
    }
}

/// An index from keys to the items (watchers) whose bounds contain them.
pub struct Matcher<T> {
    keys: HashMap<Vec<u8>, HashSet<T>>,
    ranges: Option<Box<Node<T>>>,
    len: usize,
}

impl<T: Copy + Eq + Hash> Default for Matcher<T> {
    fn default() -> Self {
        Matcher {
            keys: HashMap::new(),
            ranges: None,
            len: 0,
        }
    }
}

impl<T: Copy + Eq + Hash> Matcher<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, bounds: &Bounds, item: T) {
        let new = match bounds {
            Bounds::Key(k) => self.keys.entry(k.clone()).or_default().insert(item),
            Bounds::Range(start, end) => {
                let mut added = false;
                self.ranges = Some(insert(self.ranges.take(), start, end, item, &mut added));
                added
            }
        };
        self.len += usize::from(new);
    }

    pub fn remove(&mut self, bounds: &Bounds, item: T) {
        let removed = match bounds {
            Bounds::Key(k) => match self.keys.get_mut(k) {
                Some(set) => {
                    let removed = set.remove(&item);
                    if set.is_empty() {
                        self.keys.remove(k);
                    }
                    removed
                }
                None => false,
            },
            Bounds::Range(start, end) => {
                let mut removed = false;
                self.ranges = remove(self.ranges.take(), start, end, item, &mut removed);
                removed
            }
        };
        self.len -= usize::from(removed);
    }

    /// Calls `f` for every item whose bounds contain `key`.
    pub fn matches(&self, key: &[u8], f: &mut impl FnMut(T)) {
        if let Some(set) = self.keys.get(key) {
            set.iter().for_each(|&t| f(t));
        }
        stab(self.ranges.as_deref(), key, f);
    }
}

struct Node<T> {
    start: Vec<u8>,
    end: End,
    priority: u64,
    /// The greatest `end` in this subtree.
    max_end: End,
    items: HashSet<T>,
    left: Option<Box<Node<T>>>,
    right: Option<Box<Node<T>>>,
}

impl<T> Node<T> {
    fn update(&mut self) {
        let mut max = &self.end;
        for child in [&self.left, &self.right].into_iter().flatten() {
            if child.max_end > *max {
                max = &child.max_end;
            }
        }
        if *max != self.max_end {
            self.max_end = max.clone();
        }
    }
}

fn rotate_right<T>(mut node: Box<Node<T>>) -> Box<Node<T>> {
    let mut left = node.left.take().expect("rotate right needs a left child");
    node.left = left.right.take();
    node.update();
    left.right = Some(node);
    left.update();
    left
}

fn rotate_left<T>(mut node: Box<Node<T>>) -> Box<Node<T>> {
    let mut right = node.right.take().expect("rotate left needs a right child");
    node.right = right.left.take();
    node.update();
    right.left = Some(node);
    right.update();
    right
}

fn insert<T: Eq + Hash>(
    node: Option<Box<Node<T>>>,
    start: &[u8],
    end: &End,
    item: T,
    added: &mut bool,
) -> Box<Node<T>> {
    let Some(mut node) = node else {
        *added = true;
        return Box::new(Node {
            start: start.to_vec(),
            end: end.clone(),
            priority: rand::random(),
            max_end: end.clone(),
            items: HashSet::from([item]),
            left: None,
            right: None,
        });
    };
    match (start, end).cmp(&(node.start.as_slice(), &node.end)) {
        std::cmp::Ordering::Equal => {
            *added = node.items.insert(item);
            node
        }
        std::cmp::Ordering::Less => {
            let child = insert(node.left.take(), start, end, item, added);
            let rotate = child.priority > node.priority;
            node.left = Some(child);
            node.update();
            if rotate {
                rotate_right(node)
            } else {
                node
            }
        }
        std::cmp::Ordering::Greater => {
            let child = insert(node.right.take(), start, end, item, added);
            let rotate = child.priority > node.priority;
            node.right = Some(child);
            node.update();
            if rotate {
                rotate_left(node)
            } else {
                node
            }
        }
    }
}

/// Joins two treaps whose keys are all ordered `left < right`.
fn merge<T>(left: Option<Box<Node<T>>>, right: Option<Box<Node<T>>>) -> Option<Box<Node<T>>> {
    match (left, right) {
        (None, r) => r,
        (l, None) => l,
        (Some(mut l), Some(mut r)) => {
            if l.priority > r.priority {
                l.right = merge(l.right.take(), Some(r));
                l.update();
                Some(l)
            } else {
                r.left = merge(Some(l), r.left.take());
                r.update();
                Some(r)
            }
        }
    }
}

fn remove<T: Eq + Hash>(
    node: Option<Box<Node<T>>>,
    start: &[u8],
    end: &End,
    item: T,
    removed: &mut bool,
) -> Option<Box<Node<T>>> {
    let mut node = node?;
    match (start, end).cmp(&(node.start.as_slice(), &node.end)) {
        std::cmp::Ordering::Equal => {
            *removed = node.items.remove(&item);
            if node.items.is_empty() {
                return merge(node.left.take(), node.right.take());
            }
        }
        std::cmp::Ordering::Less => node.left = remove(node.left.take(), start, end, item, removed),
        std::cmp::Ordering::Greater => {
            node.right = remove(node.right.take(), start, end, item, removed)
        }
    }
    node.update();
    Some(node)
}

fn stab<T: Copy>(node: Option<&Node<T>>, key: &[u8], f: &mut impl FnMut(T)) {
    let Some(node) = node else { return };
    if !node.max_end.is_after(key) {
        return;
    }
    stab(node.left.as_deref(), key, f);
    if node.start.as_slice() <= key {
        if node.end.is_after(key) {
            node.items.iter().for_each(|&t| f(t));
        }
        stab(node.right.as_deref(), key, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![0u8, b'a', b'b', b'c', 0xFF]),
            0..4,
        )
    }

    fn bounds() -> impl Strategy<Value = Bounds> {
        prop_oneof![
            key().prop_map(Bounds::Key),
            (key(), key()).prop_map(|(a, b)| Bounds::Range(a, End::Key(b))),
            key().prop_map(|a| Bounds::Range(a, End::Unbounded)),
        ]
    }

    fn matching(m: &Matcher<u32>, key: &[u8]) -> Vec<u32> {
        let mut out = vec![];
        m.matches(key, &mut |t| out.push(t));
        out.sort_unstable();
        out
    }

    proptest! {
        /// Against a plain list: inserts and removes in any order, every lookup finds exactly the
        /// items whose bounds contain the key.
        #[test]
        fn finds_exactly_the_containing_bounds(
            ops in prop::collection::vec((bounds(), 0u32..6, any::<bool>()), 1..120),
            probes in prop::collection::vec(key(), 1..20),
        ) {
            let mut m = Matcher::default();
            let mut model: Vec<(Bounds, u32)> = vec![];
            for (b, item, add) in ops {
                if add {
                    m.insert(&b, item);
                    if !model.contains(&(b.clone(), item)) {
                        model.push((b, item));
                    }
                } else {
                    m.remove(&b, item);
                    model.retain(|x| *x != (b.clone(), item));
                }
                prop_assert_eq!(m.len(), model.len());
            }
            for p in probes {
                let mut want: Vec<u32> =
                    model.iter().filter(|(b, _)| b.contains(&p)).map(|(_, t)| *t).collect();
                want.sort_unstable();
                prop_assert_eq!(matching(&m, &p), want);
            }
        }
    }

    #[test]
    fn unbounded_ranges_and_single_keys() {
        let mut m = Matcher::default();
        m.insert(&Bounds::Range(b"a".to_vec(), End::Unbounded), 1);
        m.insert(&Bounds::Key(b"b".to_vec()), 2);
        m.insert(&Bounds::Range(b"c".to_vec(), End::Key(b"d".to_vec())), 3);
        assert_eq!(matching(&m, b"b"), vec![1, 2]);
        assert_eq!(matching(&m, b"c\xff"), vec![1, 3]);
        assert_eq!(matching(&m, b"d"), vec![1]);
        assert_eq!(matching(&m, b""), Vec::<u32>::new());
        m.remove(&Bounds::Range(b"a".to_vec(), End::Unbounded), 1);
        assert_eq!(matching(&m, b"d"), Vec::<u32>::new());
    }
}
