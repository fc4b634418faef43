//! Elapsed seconds that work in a browser too: `std::time::Instant` panics on
//! `wasm32-unknown-unknown`, where the page's clock is JavaScript's `Date.now()`.

/// A point in time to measure seconds from.
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch {
    #[cfg(not(target_arch = "wasm32"))]
    start: std::time::Instant,
    #[cfg(target_arch = "wasm32")]
    start_ms: f64,
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            #[cfg(not(target_arch = "wasm32"))]
            start: std::time::Instant::now(),
            #[cfg(target_arch = "wasm32")]
            start_ms: js_sys::Date::now(),
        }
    }

    /// Seconds since [`Stopwatch::start`].
    pub fn seconds(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.start.elapsed().as_secs_f64()
        }
        #[cfg(target_arch = "wasm32")]
        {
            (js_sys::Date::now() - self.start_ms) / 1000.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_grow_from_zero() {
        let w = Stopwatch::start();
        let first = w.seconds();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = w.seconds();
        assert!((0.0..1.0).contains(&first), "{first}");
        assert!(later >= first + 0.015, "{first} then {later}");
    }
}
