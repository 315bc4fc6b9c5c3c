//! Encrypted datagrams waiting for the network, grouped for UDP segmentation offload.
//!
//! The [`Outbox`] is a bounded queue of [`Batch`]es. A batch is one buffer holding datagrams of
//! one size back to back (the last may be shorter), which is exactly what one `sendmsg` with
//! `UDP_SEGMENT` sends. Datagrams are written in place by the encryption step, so a packet is
//! copied once from the TCP/IP stack into its batch and never again before the kernel.
//!
//! Buffers are allocated once and recycled: nothing is allocated per packet.

use std::collections::VecDeque;

/// A run of equal-size datagrams in one buffer.
pub struct Batch {
    buf: Box<[u8]>,
    used: usize,
    segment: usize,
    count: usize,
    closed: bool,
}

impl Batch {
    fn new() -> Self {
        Batch {
            buf: vec![0; BATCH_BYTES].into_boxed_slice(),
            used: 0,
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    /// The datagrams, back to back.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.used]
    }

    /// The size of every datagram but possibly the last, which may be shorter.
    pub fn segment(&self) -> usize {
        self.segment
    }

    /// How many datagrams the batch holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The datagrams one by one, for a socket without segmentation offload.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes().chunks(self.segment.max(1))
    }

    fn reset(&mut self) {
        self.used = 0;
        self.segment = 0;
        self.count = 0;
        self.closed = false;
    }

    fn fits(&self, max_len: usize) -> bool {
        !self.closed && self.count < MAX_SEGMENTS && self.used + max_len <= self.buf.len()
    }

    // Accounts for `len` bytes just written at `used`; returns false if they do not belong here.
    fn commit(&mut self, len: usize) -> bool {
        if self.count > 0 && len > self.segment {
            return false;
        }
        if self.count == 0 {
            self.segment = len;
        } else if len < self.segment {
            self.closed = true;
        }
        self.used += len;
        self.count += 1;
        true
    }
}

/// A bounded queue of batches. See the module documentation.
pub struct Outbox {
    queued: VecDeque<Batch>,
    free: Vec<Batch>,
    max_batches: usize,
}

impl Outbox {
    /// Creates an outbox that holds at most `max_batches` batches (one more transiently).
    pub fn new(max_batches: usize) -> Self {
        Outbox {
            queued: VecDeque::new(),
            free: Vec::new(),
            max_batches: max_batches.max(1),
        }
    }

    /// Whether another datagram can be accepted now. Callers check before encrypting, so that
    /// nothing encrypted is ever dropped for lack of room.
    pub fn has_room(&self, max_len: usize) -> bool {
        self.queued.len() < self.max_batches || self.queued.back().is_some_and(|b| b.fits(max_len))
    }

    /// Whether anything waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Writes one datagram of at most `max_len` bytes with `write`, which returns its length
    /// (or `None` to write nothing).
    pub fn push_with(&mut self, max_len: usize, write: impl FnOnce(&mut [u8]) -> Option<usize>) {
        let max_len = max_len.min(BATCH_BYTES);
        if !self.queued.back().is_some_and(|b| b.fits(max_len)) {
            self.open_batch();
        }
        let Some(batch) = self.queued.back_mut() else {
            return;
        };
        let start = batch.used;
        let Some(len) = write(&mut batch.buf[start..start + max_len]) else {
            return;
        };
        if batch.commit(len) {
            return;
        }
        // Longer than the batch's segment size: move it to a batch of its own.
        batch.closed = true;
        let mut moved = self.free.pop().unwrap_or_else(Batch::new);
        if let Some(batch) = self.queued.back() {
            moved.buf[..len].copy_from_slice(&batch.buf[start..start + len]);
        }
        moved.commit(len);
        self.queued.push_back(moved);
    }

    /// Copies a finished datagram in (handshake messages and other rare ones).
    pub fn push(&mut self, datagram: &[u8]) {
        self.push_with(datagram.len(), |dst| {
            dst[..datagram.len()].copy_from_slice(datagram);
            Some(datagram.len())
        });
    }

    /// Takes the oldest batch for sending; give it back with [`Outbox::recycle`].
    pub fn pop(&mut self) -> Option<Batch> {
        self.queued.pop_front()
    }

    /// Puts back a batch that could not be sent yet, to go first next time.
    pub fn unpop(&mut self, batch: Batch) {
        self.queued.push_front(batch);
    }

    /// Returns a sent batch's buffer for reuse.
    pub fn recycle(&mut self, mut batch: Batch) {
        batch.reset();
        if self.free.len() < self.max_batches {
            self.free.push(batch);
        }
    }

    /// Drops everything queued (the peer is gone).
    pub fn clear(&mut self) {
        while let Some(b) = self.queued.pop_front() {
            self.recycle(b);
        }
    }

    fn open_batch(&mut self) {
        if let Some(last) = self.queued.back_mut() {
            last.closed = true;
        }
        let batch = self.take_free();
        self.queued.push_back(batch);
    }

    fn take_free(&mut self) -> Batch {
        self.free.pop().unwrap_or_else(Batch::new)
    }
}

// One UDP GSO send carries at most 64 segments and 64 KiB.
const MAX_SEGMENTS: usize = 64;
const BATCH_BYTES: usize = 65_535;

#[cfg(test)]
mod tests {
    use super::*;

    fn push_len(outbox: &mut Outbox, len: usize, fill: u8) {
        outbox.push_with(1500, |dst| {
            dst[..len].fill(fill);
            Some(len)
        });
    }

    #[test]
    fn equal_datagrams_share_a_batch_and_a_shorter_one_closes_it() {
        let mut outbox = Outbox::new(4);
        for i in 0..3 {
            push_len(&mut outbox, 100, i);
        }
        push_len(&mut outbox, 40, 9);
        push_len(&mut outbox, 100, 7);
        let first = outbox.pop().unwrap();
        assert_eq!(
            (first.count(), first.segment(), first.bytes().len()),
            (4, 100, 340)
        );
        let sizes: Vec<usize> = first.datagrams().map(<[u8]>::len).collect();
        assert_eq!(sizes, vec![100, 100, 100, 40]);
        let second = outbox.pop().unwrap();
        assert_eq!((second.count(), second.bytes()[0]), (1, 7));
        assert!(outbox.pop().is_none());
    }

    #[test]
    fn a_longer_datagram_moves_to_its_own_batch_intact() {
        let mut outbox = Outbox::new(4);
        push_len(&mut outbox, 50, 1);
        push_len(&mut outbox, 80, 2);
        let a = outbox.pop().unwrap();
        let b = outbox.pop().unwrap();
        assert_eq!(a.bytes(), &[1u8; 50][..]);
        assert_eq!(b.bytes(), &[2u8; 80][..]);
    }

    #[test]
    fn room_runs_out_and_comes_back_after_recycling() {
        let mut outbox = Outbox::new(2);
        let mut pushed = 0;
        while outbox.has_room(1500) {
            push_len(&mut outbox, 1452, 0);
            pushed += 1;
            assert!(pushed < 1000, "outbox never filled");
        }
        // Each 64 KiB batch takes 45 datagrams of 1452 bytes.
        assert_eq!(pushed, 2 * 45);
        let batch = outbox.pop().unwrap();
        outbox.recycle(batch);
        assert!(outbox.has_room(1500));
    }
}
