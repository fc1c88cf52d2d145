//! A copy of a response's bytes, collected as they stream to the client, for
//! storing once the response turns out complete. Bounded: past the cap the
//! copy is dropped at once and the response streams on uncopied.

use bytes::{Bytes, BytesMut};

#[derive(Debug)]
pub struct Capture {
    buf: BytesMut,
    cap: usize,
    over: bool,
}

impl Capture {
    /// `size_hint`: the response's `Content-Length`, when it declared one.
    /// `None` when it is known already not to fit.
    pub fn start(cap: usize, size_hint: Option<usize>) -> Option<Self> {
        if size_hint.is_some_and(|n| n > cap) {
            return None;
        }
        Some(Self {
            buf: BytesMut::with_capacity(size_hint.unwrap_or(0).min(cap)),
            cap,
            over: false,
        })
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.over {
            return;
        }
        if self.buf.len() + chunk.len() > self.cap {
            self.over = true;
            self.buf = BytesMut::new();
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Gave up (the response outgrew the cap).
    pub fn overflowed(&self) -> bool {
        self.over
    }

    /// The whole response, unless it outgrew the cap.
    pub fn finish(self) -> Option<Bytes> {
        (!self.over).then(|| self.buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_response_within_the_cap() {
        let mut c = Capture::start(10, None).unwrap();
        c.feed(b"hello");
        c.feed(b"world");
        assert!(!c.overflowed());
        assert_eq!(c.finish().unwrap(), Bytes::from_static(b"helloworld"));
    }

    #[test]
    fn drops_the_copy_as_soon_as_it_exceeds_the_cap() {
        let mut c = Capture::start(10, None).unwrap();
        c.feed(b"hello");
        c.feed(b"world!");
        assert!(c.overflowed());
        assert_eq!(c.buf.capacity(), 0, "memory given back at once");
        c.feed(b"x");
        assert!(c.finish().is_none());
    }

    #[test]
    fn a_declared_length_over_the_cap_is_never_copied() {
        assert!(Capture::start(10, Some(11)).is_none());
        let c = Capture::start(10, Some(10)).unwrap();
        assert_eq!(c.finish().unwrap().len(), 0);
    }
}
