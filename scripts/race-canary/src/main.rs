//! A deliberate data race (two threads write one `u64` with no
//! synchronisation). `scripts/race-check.sh` builds it with the same flags as
//! the tests and requires ThreadSanitizer to report it: a sanitizer run that
//! would not see this race proves nothing by reporting no races elsewhere.

use std::cell::UnsafeCell;

struct Racy(UnsafeCell<u64>);
// SAFETY: none, on purpose: this program exists to contain a data race for
// ThreadSanitizer to find. It is never built into braid.
unsafe impl Sync for Racy {}

static CELL: Racy = Racy(UnsafeCell::new(0));

fn main() {
    let t = std::thread::spawn(|| {
        // SAFETY: none (see `Racy`): an unsynchronised write, the race.
        unsafe { *CELL.0.get() += 1 }
    });
    // SAFETY: none (see `Racy`): the other side of the race.
    unsafe { *CELL.0.get() += 1 }
    t.join().unwrap();
    // SAFETY: both writers are done (joined); a plain read.
    println!("{}", unsafe { *CELL.0.get() });
}
