//! RWF flags against this machine's kernel.

use super::*;

/// A buffer of `len` bytes aligned to 4096 (for O_DIRECT), without unsafe.
fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    *storage = vec![0u8; len + 4096];
    let skip = storage.as_ptr().align_offset(4096);
    &mut storage[skip..skip + len]
}

#[test]
fn rwf_dsync_sync_hipri_write_and_read_back() {
    let t = Temp::new("rwf-sync");
    let f = &t.file;
    for (i, flags) in [
        RwFlags::DSYNC,
        RwFlags::SYNC,
        RwFlags::DSYNC | RwFlags::SYNC,
        RwFlags::HIPRI,
    ]
    .into_iter()
    .enumerate()
    {
        let data = [i as u8 + 1; 512];
        let off = i as u64 * 512;
        let n = f
            .pwritev2_nofs(
                &[IoSlice::new(&data[..100]), IoSlice::new(&data[100..])],
                off,
                flags,
            )
            .unwrap_or_else(|e| panic!("{flags}: {e}"));
        assert_eq!(n, 512);
        let (mut a, mut b) = ([0u8; 12], [0u8; 500]);
        let n = f
            .preadv2_nofs(
                &mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)],
                off,
                flags,
            )
            .unwrap_or_else(|e| panic!("{flags}: {e}"));
        assert_eq!(n, 512);
        assert!(a.iter().chain(&b).all(|&x| x == i as u8 + 1), "{flags}");
    }
}

#[test]
fn rwf_nowait_on_uncached_buffered_read_would_block() {
    let t = Temp::new("rwf-nowait");
    let f = &t.file;
    // Data on disk but not in the page cache: written with O_DIRECT,
    // which invalidates the cached range. (A hole would not do: since
    // Linux 6.x a NOWAIT read starts NOIO readahead, which fills holes
    // without I/O.) The NOWAIT read then starts readahead and returns
    // EAGAIN rather than wait for the disk — unless the disk finished
    // first, which on a fast disk happens in most tries (measured: about 1
    // run in 15 had 32 tries all finish first), so try up to 256 fresh
    // regions (a sparse 256 MiB file).
    let d = NoFsFile::open_direct(&t.path, OpenOptions::new().write(true)).unwrap();
    let mut storage = Vec::new();
    let w = aligned(&mut storage, 64 << 10);
    w.fill(0x77);
    let mut blocked = None;
    for round in 0..256u64 {
        let off = round * (1 << 20);
        d.write_all_at_nofs(w, off).unwrap();
        let mut buf = [1u8; 4096];
        match f.preadv2_nofs(&mut [IoSliceMut::new(&mut buf)], off, RwFlags::NOWAIT) {
            Ok(n) => assert_eq!((n, buf), (4096, [0x77; 4096])),
            Err(e) => {
                blocked = Some((e, off));
                break;
            }
        }
    }
    let (e, off) = blocked.expect("256 NOWAIT reads of uncached data never blocked");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
    assert!(e.to_string().contains("RWF_NOWAIT"), "{e}");
    assert_eq!(e.flags(), RwFlags::NOWAIT);
    // Once cached, the same call succeeds without blocking.
    let mut buf = [1u8; 4096];
    f.read_exact_at_nofs(&mut buf, off).unwrap();
    buf = [1u8; 4096];
    let n = f
        .preadv2_nofs(&mut [IoSliceMut::new(&mut buf)], off, RwFlags::NOWAIT)
        .unwrap();
    assert_eq!((n, buf), (4096, [0x77; 4096]));
}

#[test]
fn rwf_append_and_noappend() {
    let t = Temp::new("rwf-append");
    let f = &t.file;
    f.write_all_at_nofs(b"0123", 0).unwrap();
    // RWF_APPEND ignores the offset.
    f.pwritev2_nofs(&[IoSlice::new(b"45")], 0, RwFlags::APPEND)
        .unwrap();
    let mut b = [0u8; 6];
    f.read_exact_at_nofs(&mut b, 0).unwrap();
    assert_eq!(&b, b"012345");
    // RWF_NOAPPEND (6.9) overrides O_APPEND for one call.
    let app = NoFsFile::open(&t.path, OpenOptions::new().append(true)).unwrap();
    app.pwritev2_nofs(&[IoSlice::new(b"ab")], 0, RwFlags::NOAPPEND)
        .unwrap();
    f.read_exact_at_nofs(&mut b, 0).unwrap();
    assert_eq!(&b, b"ab2345");
}

#[test]
fn rwf_dontcache_round_trips_or_names_the_flag() {
    let t = Temp::new("rwf-dontcache");
    let data = [0x5au8; 8192];
    match t
        .file
        .pwritev2_nofs(&[IoSlice::new(&data)], 0, RwFlags::DONTCACHE)
    {
        Ok(n) => {
            eprintln!("RWF_DONTCACHE: supported here");
            assert_eq!(n, 8192);
            let mut b = [0u8; 8192];
            let n = t
                .file
                .preadv2_nofs(&mut [IoSliceMut::new(&mut b)], 0, RwFlags::DONTCACHE)
                .unwrap();
            assert_eq!((n, &b[..]), (8192, &data[..]));
        }
        // A file system without FOP_DONTCACHE answers EOPNOTSUPP.
        Err(e) => {
            eprintln!("RWF_DONTCACHE: rejected here: {e}");
            assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("RWF_DONTCACHE (Linux 6.14)"), "{e}");
        }
    }
}

#[test]
fn rwf_atomic_is_rejected_where_unsupported_naming_the_flag() {
    let t = Temp::new("rwf-atomic");
    // Reads never take RWF_ATOMIC; buffered writes need file-system
    // support this host's ext4 does not advertise without O_DIRECT.
    let mut b = [0u8; 4096];
    let e = t
        .file
        .preadv2_nofs(&mut [IoSliceMut::new(&mut b)], 0, RwFlags::ATOMIC)
        .unwrap_err();
    eprintln!("RWF_ATOMIC read: {e}");
    assert!(e.to_string().contains("RWF_ATOMIC (Linux 6.11)"), "{e}");
    assert!(matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EINVAL)
    ));
    // O_DIRECT, aligned buffer, offset and power-of-two length: either
    // the device offers atomic writes, or the error names the flag.
    let direct = match NoFsFile::open_direct(&t.path, OpenOptions::new().read(true).write(true)) {
        Ok(f) => f,
        Err(e) => panic!("O_DIRECT on the temp dir's file system: {e}"),
    };
    let mut storage = Vec::new();
    let buf = aligned(&mut storage, 4096);
    buf.fill(0xa5);
    match direct.pwritev2_nofs(&[IoSlice::new(buf)], 0, RwFlags::ATOMIC) {
        Ok(n) => {
            eprintln!("RWF_ATOMIC with O_DIRECT: supported here");
            assert_eq!(n, 4096);
            let mut back = [0u8; 4096];
            t.file.read_exact_at_nofs(&mut back, 0).unwrap();
            assert_eq!(back, [0xa5; 4096]);
        }
        Err(e) => {
            eprintln!("RWF_ATOMIC with O_DIRECT: rejected here: {e}");
            assert!(e.to_string().contains("RWF_ATOMIC (Linux 6.11)"), "{e}");
            assert_eq!(e.bytes_done(), 0);
        }
    }
}

#[test]
fn unknown_rwf_bit_is_unsupported_and_named() {
    let t = Temp::new("rwf-unknown");
    let e = t
        .file
        .pwritev2_nofs(
            &[IoSlice::new(b"x")],
            0,
            RwFlags::from_bits_retain(0x4000_0000),
        )
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("unknown bits 0x40000000"), "{e}");
    assert_eq!(t.file.get_ref().metadata().unwrap().len(), 0);
}

#[test]
fn o_direct_round_trip_with_aligned_buffers() {
    let t = Temp::new("direct");
    let d = NoFsFile::open_direct(&t.path, OpenOptions::new().read(true).write(true)).unwrap();
    let mut s1 = Vec::new();
    let w = aligned(&mut s1, 8192);
    for (i, b) in w.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    d.write_all_at_nofs(w, 4096).unwrap();
    let mut s2 = Vec::new();
    let r = aligned(&mut s2, 8192);
    d.read_exact_at_nofs(r, 4096).unwrap();
    assert_eq!(r, w);
    // Misaligned O_DIRECT I/O: EINVAL, with the alignment hint.
    let e = d.pwrite_nofs(&w[1..513], 1).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("aligned"), "{e}");
}
