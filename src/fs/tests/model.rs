//! Model-based round trips, on the real kernel and through random `EINTR`
//! and short I/O of the fake backend.

use super::*;

// The project's one test generator; a failure is reproducible with
// `RECLAIM_SCOPE_SEED=<seed> cargo test fs::tests::model`.
#[path = "../../../tests/support/rng.rs"]
mod rng;
use rng::Rng;

/// The shapes of I/O the model tests draw.
trait IoShapes {
    fn len(&mut self) -> usize;
    fn offset(&mut self) -> u64;
}

impl IoShapes for Rng {
    /// Mostly small, sometimes page-crossing, sometimes large.
    fn len(&mut self) -> usize {
        match self.below(4) {
            0 => self.below(16) as usize,
            1 => self.below(4097) as usize,
            2 => 4096 * (1 + self.below(4)) as usize,
            _ => self.below(70_000) as usize,
        }
    }
    fn offset(&mut self) -> u64 {
        match self.below(3) {
            0 => self.below(8192),
            1 => 4096 * self.below(64),
            _ => self.below(300_000),
        }
    }
}

fn model_write(model: &mut Vec<u8>, off: u64, data: &[u8]) {
    if data.is_empty() {
        return; // a zero-length write does not extend the file
    }
    let (off, end) = (off as usize, off as usize + data.len());
    if model.len() < end {
        model.resize(end, 0);
    }
    model[off..end].copy_from_slice(data);
}

/// `model[off..off + n]`, empty when `n == 0` (even beyond the end).
fn span(model: &[u8], off: u64, n: usize) -> &[u8] {
    if n == 0 {
        &[]
    } else {
        &model[off as usize..off as usize + n]
    }
}

/// Splits `len` into 1..=5 random slice lengths.
fn split(rng: &mut Rng, len: usize) -> Vec<usize> {
    let parts = 1 + rng.below(5) as usize;
    let mut cuts: Vec<usize> = (0..parts - 1)
        .map(|_| rng.below(len as u64 + 1) as usize)
        .collect();
    cuts.sort_unstable();
    let mut last = 0;
    let mut out = Vec::new();
    for c in cuts.into_iter().chain([len]) {
        out.push(c - last);
        last = c;
    }
    out
}

/// Random operations against a `Vec<u8>` model; every read is checked
/// against the model, and the whole file at the end.
fn model_run(rng: &mut Rng, seed: u64, t: &Temp, ops: usize) {
    let f = &t.file;
    let mut model: Vec<u8> = Vec::new();
    for step in 0..ops {
        let ctx = format!("seed {seed}, step {step}");
        let off = rng.offset();
        let len = rng.len();
        match rng.below(10) {
            0 | 1 => {
                let data = rng.bytes(len);
                f.write_all_at_nofs(&data, off).expect(&ctx);
                model_write(&mut model, off, &data);
            }
            2 => {
                let data = rng.bytes(len);
                let n = f.pwrite_nofs(&data, off).expect(&ctx);
                model_write(&mut model, off, &data[..n]);
            }
            3 => {
                let data = rng.bytes(len);
                let lens = split(rng, len);
                let mut rest = &data[..];
                let slices: Vec<IoSlice<'_>> = lens
                    .iter()
                    .map(|&l| {
                        let (a, b) = rest.split_at(l);
                        rest = b;
                        IoSlice::new(a)
                    })
                    .collect();
                let n = f.pwritev2_nofs(&slices, off, RwFlags::empty()).expect(&ctx);
                model_write(&mut model, off, &data[..n]);
            }
            4 | 5 => {
                let mut buf = vec![0xeeu8; len];
                let r = f.read_exact_at_nofs(&mut buf, off);
                let end = off as usize + len;
                if end <= model.len() || len == 0 {
                    r.expect(&ctx);
                    assert_eq!(buf[..], *span(&model, off, len), "{ctx}");
                } else {
                    let e = r.expect_err(&ctx);
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{ctx}: {e}");
                    let have = model.len().saturating_sub(off as usize);
                    assert_eq!(e.bytes_done(), have as u64, "{ctx}");
                    assert_eq!(buf[..have], *span(&model, off, have), "{ctx}");
                }
            }
            6 => {
                let mut buf = vec![0xeeu8; len];
                let n = f.pread_nofs(&mut buf, off).expect(&ctx);
                let have = model.len().saturating_sub(off as usize).min(len);
                assert_eq!(n, have, "{ctx}");
                assert_eq!(buf[..n], *span(&model, off, n), "{ctx}");
            }
            7 => {
                let mut buf = vec![0xeeu8; len];
                let lens = split(rng, len);
                let mut rest = &mut buf[..];
                let mut slices: Vec<IoSliceMut<'_>> = Vec::new();
                for l in lens {
                    let (a, b) = std::mem::take(&mut rest).split_at_mut(l);
                    rest = b;
                    slices.push(IoSliceMut::new(a));
                }
                let n = f
                    .preadv2_nofs(&mut slices, off, RwFlags::empty())
                    .expect(&ctx);
                drop(slices);
                let have = model.len().saturating_sub(off as usize).min(len);
                assert_eq!(n, have, "{ctx}");
                assert_eq!(buf[..n], *span(&model, off, n), "{ctx}");
            }
            8 => {
                let new_len = rng.offset();
                f.set_len_nofs(new_len).expect(&ctx);
                model.resize(new_len as usize, 0);
            }
            _ => {
                let len = len as u64;
                match rng.below(3) {
                    0 => {
                        f.punch_hole_nofs(off, len).expect(&ctx);
                        let end = ((off + len) as usize).min(model.len());
                        if (off as usize) < end {
                            model[off as usize..end].fill(0);
                        }
                    }
                    1 => {
                        f.zero_range_nofs(off, len).expect(&ctx);
                        if len > 0 {
                            model_write(&mut model, off, &vec![0; len as usize]);
                        }
                    }
                    _ => {
                        f.allocate_nofs(off, len).expect(&ctx);
                        if len > 0 && model.len() < (off + len) as usize {
                            model.resize((off + len) as usize, 0);
                        }
                    }
                }
            }
        }
        assert_eq!(
            f.get_ref().metadata().unwrap().len(),
            model.len() as u64,
            "{ctx}: file size"
        );
    }
    let mut all = vec![0u8; model.len()];
    f.read_exact_at_nofs(&mut all, 0).unwrap();
    assert!(
        all == model,
        "seed {seed}: final contents differ from the model"
    );
}

#[test]
fn model_round_trips_on_the_real_kernel() {
    let (mut rng, seed) = Rng::from_env(0x5eed_f11e);
    for _ in 0..8 {
        let t = Temp::new("model");
        model_run(&mut rng, seed, &t, 150);
    }
}

/// Up to 5 `EINTR`s and short transfers for a loop over `len` bytes;
/// each short count leaves bytes to go, so the loop consumes them all.
fn random_script(rng: &mut Rng, len: usize) -> Vec<IoScript> {
    let mut left = len;
    let mut script = Vec::new();
    for _ in 0..rng.below(6) {
        if rng.below(2) == 0 || left < 2 {
            script.push(IoScript::Err(sio::EINTR));
        } else {
            let n = 1 + rng.below(left as u64 - 1) as usize;
            left -= n;
            script.push(IoScript::Short(n));
        }
    }
    script
}

#[test]
fn model_round_trips_through_random_eintr_and_short_io() {
    let (mut rng, seed) = Rng::from_env(0xe1_4700);
    on_fake(FakeThread::new(Mode::Permitted), move || {
        let t = Temp::new("model-fake");
        let mut interrupted = 0;
        for step in 0..300 {
            let ctx = format!("seed {seed}, step {step}");
            let off = rng.offset();
            let len = 1 + rng.len();
            let data = rng.bytes(len);
            let script = random_script(&mut rng, len);
            interrupted += script.len();
            fake::script_io(script);
            t.file.write_all_at_nofs(&data, off).expect(&ctx);
            assert_eq!(fake::io_script_left(), 0, "{ctx}: script not consumed");
            let mut back = vec![0u8; len];
            fake::script_io(random_script(&mut rng, len));
            t.file.read_exact_at_nofs(&mut back, off).expect(&ctx);
            assert_eq!(fake::io_script_left(), 0, "{ctx}: script not consumed");
            assert!(back == data, "{ctx}: read back differs");
        }
        assert!(interrupted > 300, "the script hardly interrupted anything");
        // Each call entered one scope: 2 prctls per call, not per syscall.
        assert_eq!(sets(), 2 * 600);
    });
}
