//! `NoFsFile` 4 KiB `pread_nofs`/`pwrite_nofs` against plain `pread`/`pwrite`
//! (std `FileExt`) on the same cached file, in one run.
//!
//! Run: `cargo bench --features unstable-bench --bench fs` (host), or
//! `cargo xtask vm-bench` (inside the VM, with `CAP_SYS_RESOURCE`).
//!
//! The paths measured:
//! - `plain`: `FileExt::read_at` / `write_at`, the baseline;
//! - `nofs_flagged`: the crate believes the thread is already an I/O
//!   flusher (`__bench::assume_thread_flag`, the exact state of a thread
//!   that inherited the flag or runs inside an `IoFlusher`): no syscall but
//!   the I/O. Target ≤ 1.02 × `plain`;
//! - `nofs_refused_memo`: best effort where the kernel refused the prctl
//!   (no CAP_SYS_RESOURCE): the refusal is remembered, no syscall but the
//!   I/O — and no protection;
//! - with the capability only, `nofs_unflagged`: the real set + restore
//!   `prctl` pair around every call (keep hot loops in an `IoFlusher`);
//! - `prctl_refused`: one refused `prctl`, to estimate the unflagged cost
//!   (two of them) where the capability is missing.
//!
//! Writes overwrite the same cached, already-allocated 4 KiB, so no path
//! allocates page cache: the numbers are the crate's overhead, not reclaim.
//!
//! Timings on a shared machine (and under TCG) drift between benchmarks, so
//! the bench also prints paired ratios: `ROUNDS` rounds that each time a
//! block of plain calls and a block of `_nofs` calls back to back, and the
//! median of the per-round ratios. With the capability, on an unflagged
//! thread: `paired ratio pread_nofs / pread: X.XXX` and likewise `pwrite`;
//! without it the bench says that it did not measure them.
//!
//! Instruction counts (user space; the kernel's are the same for both):
//! `FS_BENCH_CALLGRIND=<path> valgrind --tool=callgrind <bench binary>`
//! runs `FS_BENCH_ITERS` (default 100000) calls of one path —
//! `pread_plain`, `pread_flagged`, `pread_memo`, `pwrite_plain`,
//! `pwrite_flagged`, `pwrite_memo` — and exits.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use common::{callgrind_iters, paired_ratio, ROUNDS};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use reclaim_scope::{__bench, set_thread_io_flusher, support, NoFsFile, NoFsPolicy};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const BLOCK: usize = 4096;
const PER_ROUND: usize = 500;

fn bench_file() -> NoFsFile {
    let path = std::env::temp_dir().join(format!("reclaim-scope-bench-fs-{}", std::process::id()));
    let file = NoFsFile::open(
        &path,
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
    )
    .expect("create bench file");
    std::fs::remove_file(&path).expect("unlink bench file");
    let file = file.with_policy(NoFsPolicy::BestEffort);
    file.write_all_at_nofs(&[0x5a; 16 * BLOCK], 0).unwrap();
    file
}

/// The callgrind mode: one path, `FS_BENCH_ITERS` times.
fn callgrind(path: &str) {
    let iters = callgrind_iters("FS_BENCH_ITERS");
    let file = bench_file();
    let mut buf = vec![0u8; BLOCK];
    let data = vec![0xa5u8; BLOCK];
    let _ = file.pread_nofs(&mut buf, 0); // the refusal, if any, is remembered now
    if path.ends_with("flagged") {
        __bench::assume_thread_flag(true);
    }
    for _ in 0..iters {
        match path {
            "pread_plain" => drop(file.get_ref().read_at(black_box(&mut buf), 4096)),
            "pwrite_plain" => drop(file.get_ref().write_at(black_box(&data), 8192)),
            "pread_flagged" | "pread_memo" => drop(file.pread_nofs(black_box(&mut buf), 4096)),
            "pwrite_flagged" | "pwrite_memo" => drop(file.pwrite_nofs(black_box(&data), 8192)),
            other => panic!("unknown FS_BENCH_CALLGRIND path {other:?}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    if let Ok(path) = std::env::var("FS_BENCH_CALLGRIND") {
        return callgrind(&path);
    }
    let available = support().is_available();
    eprintln!("support(): {}", support());

    let file = bench_file();
    let std_file = file.get_ref();
    let mut buf = vec![0u8; BLOCK];
    let data = vec![0xa5u8; BLOCK];

    let mut g = c.benchmark_group("fs_4k");
    g.bench_function(BenchmarkId::new("pread", "plain"), |b| {
        b.iter(|| {
            std_file
                .read_at(black_box(&mut buf), black_box(4096))
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("pwrite", "plain"), |b| {
        b.iter(|| {
            std_file
                .write_at(black_box(&data), black_box(8192))
                .unwrap()
        })
    });

    __bench::assume_thread_flag(true);
    g.bench_function(BenchmarkId::new("pread", "nofs_flagged"), |b| {
        b.iter(|| {
            file.pread_nofs(black_box(&mut buf), black_box(4096))
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("pwrite", "nofs_flagged"), |b| {
        b.iter(|| file.pwrite_nofs(black_box(&data), black_box(8192)).unwrap())
    });
    __bench::assume_thread_flag(false);

    if available {
        g.bench_function(BenchmarkId::new("pread", "nofs_unflagged"), |b| {
            b.iter(|| {
                file.pread_nofs(black_box(&mut buf), black_box(4096))
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("pwrite", "nofs_unflagged"), |b| {
            b.iter(|| file.pwrite_nofs(black_box(&data), black_box(8192)).unwrap())
        });
    } else {
        // Make sure the refusal is remembered before measuring.
        let _ = file.pread_nofs(&mut buf, 0);
        g.bench_function(BenchmarkId::new("pread", "nofs_refused_memo"), |b| {
            b.iter(|| {
                file.pread_nofs(black_box(&mut buf), black_box(4096))
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("pwrite", "nofs_refused_memo"), |b| {
            b.iter(|| file.pwrite_nofs(black_box(&data), black_box(8192)).unwrap())
        });
        g.bench_function("prctl_refused", |b| {
            b.iter(|| black_box(set_thread_io_flusher(black_box(true))).is_err())
        });
    }
    g.finish();

    // Paired ratios, robust to drift of the machine's load. Unflagged with
    // the capability: `paired ratio pread_nofs / pread: X.XXX` (the two
    // prctls of every call); flagged: no syscall but the I/O; without the
    // capability the unflagged path is the memoised refusal (no syscall, no
    // protection), which is printed under its own name, never as the
    // unflagged ratio.
    let mut rbuf = vec![0u8; BLOCK];
    let mut rbuf2 = vec![0u8; BLOCK];
    let _ = file.pread_nofs(&mut rbuf, 0);
    for flagged in [true, false] {
        __bench::assume_thread_flag(flagged);
        let what = if flagged {
            " (flagged thread)"
        } else if available {
            ""
        } else {
            " (refusal memoised, no protection)"
        };
        let read = paired_ratio(
            PER_ROUND,
            || drop(black_box(std_file.read_at(black_box(&mut rbuf), 4096))),
            || drop(black_box(file.pread_nofs(black_box(&mut rbuf2), 4096))),
        );
        let write = paired_ratio(
            PER_ROUND,
            || drop(black_box(std_file.write_at(black_box(&data), 8192))),
            || drop(black_box(file.pwrite_nofs(black_box(&data), 8192))),
        );
        if !flagged {
            if available {
                println!(
                    "4 KiB pread_nofs/pwrite_nofs on an unflagged thread with CAP_SYS_RESOURCE \
                     (set + restore prctl around each call) against plain pread/pwrite, \
                     {PER_ROUND} calls per block, median of {ROUNDS} rounds"
                );
            } else {
                println!(
                    "paired ratio pread_nofs / pread: not measured: the kernel refuses \
                     PR_SET_IO_FLUSHER here ({}); run `cargo xtask vm-bench`",
                    support()
                );
                println!("paired ratio pwrite_nofs / pwrite: not measured (likewise)");
            }
        }
        println!("paired ratio pread_nofs{what} / pread: {read:.3}");
        println!("paired ratio pwrite_nofs{what} / pwrite: {write:.3}");
    }
    __bench::assume_thread_flag(false);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
