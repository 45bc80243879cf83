//! A bounded queue between threads that knows when its other side has gone: a
//! producer waits while it is full and the consumers live, and learns when they
//! have all left (so nothing waits for ever on a worker that stopped); a consumer
//! waits while it is empty and the producers live, and learns when they are done.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// The queue.
pub(crate) struct Handoff<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    producers: usize,
    consumers: usize,
}

/// A producer's or a consumer's place; leaving (dropping it, also on a panic) tells
/// the other side.
pub(crate) struct Side<'a, T> {
    handoff: &'a Handoff<T>,
    producer: bool,
}

impl<T> Handoff<T> {
    /// A queue of at most `capacity` items.
    pub(crate) fn new(capacity: usize) -> Handoff<T> {
        Handoff {
            state: Mutex::new(State {
                items: VecDeque::new(),
                producers: 0,
                consumers: 0,
            }),
            changed: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'g>(&self, g: MutexGuard<'g, State<T>>) -> MutexGuard<'g, State<T>> {
        self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Joins as a producer; call before any consumer can see the queue empty.
    pub(crate) fn producer(&self) -> Side<'_, T> {
        self.lock().producers += 1;
        Side {
            handoff: self,
            producer: true,
        }
    }

    /// Joins as a consumer.
    pub(crate) fn consumer(&self) -> Side<'_, T> {
        self.lock().consumers += 1;
        Side {
            handoff: self,
            producer: false,
        }
    }

    /// Queues `item`; gives it back when every consumer has left.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let mut s = self.lock();
        while s.items.len() >= self.capacity && s.consumers > 0 {
            s = self.wait(s);
        }
        if s.consumers == 0 {
            return Err(item);
        }
        s.items.push_back(item);
        self.changed.notify_all();
        Ok(())
    }

    /// The next item; `None` once it is empty and every producer is done.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(item) = s.items.pop_front() {
                self.changed.notify_all();
                return Some(item);
            }
            if s.producers == 0 {
                return None;
            }
            s = self.wait(s);
        }
    }
}

impl<T> Drop for Side<'_, T> {
    fn drop(&mut self) {
        let mut s = self.handoff.lock();
        if self.producer {
            s.producers -= 1;
        } else {
            s.consumers -= 1;
        }
        self.handoff.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_once_and_each_side_learns_when_the_other_left() {
        let h = Handoff::new(2);
        let got = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let producers: Vec<_> = (0..2).map(|_| h.producer()).collect();
            let consumers: Vec<_> = (0..3).map(|_| h.consumer()).collect();
            for (p, side) in producers.into_iter().enumerate() {
                let h = &h;
                s.spawn(move || {
                    let _side = side;
                    for i in 0..50 {
                        assert!(h.push(p * 100 + i).is_ok());
                    }
                });
            }
            for side in consumers {
                let (h, got) = (&h, &got);
                s.spawn(move || {
                    let _side = side;
                    while let Some(x) = h.pop() {
                        got.lock().unwrap_or_else(|p| p.into_inner()).push(x);
                    }
                });
            }
        });
        let mut got = got.into_inner().unwrap_or_default();
        got.sort_unstable();
        let want: Vec<usize> = (0..2)
            .flat_map(|p| (0..50).map(move |i| p * 100 + i))
            .collect();
        assert_eq!(got, want);
        // No consumer: a push comes back rather than waiting for ever.
        let lonely = Handoff::new(1);
        let _p = lonely.producer();
        assert_eq!(lonely.push(7), Err(7));
    }
}
