use super::*;

#[test]
fn ldd_parsing() {
    let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
               \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
               \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
               \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
    assert_eq!(
        parse_ldd(out),
        vec![
            PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
        ]
    );
    assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
}

#[test]
fn modules_dep_parsing() {
    let d = parse_modules_dep(
        "kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\nkernel/drivers/block/nbd.ko:\nkernel/x/target-core-user.ko.xz:\n",
    );
    assert_eq!(
        d["xfs"],
        (
            "kernel/fs/xfs/xfs.ko".into(),
            vec!["kernel/lib/libcrc32c.ko".into()]
        )
    );
    assert_eq!(d["nbd"].1, Vec::<String>::new());
    assert!(d.contains_key("target_core_user"));
}

#[test]
fn guest_death_names_the_cause() {
    let opts = VmOpts::default();
    let out = |status, timed_out, lines: &[&str]| BootOutcome {
        status,
        console: lines.iter().map(|s| s.to_string()).collect(),
        timed_out,
        boot_time: None,
        run_time: None,
    };
    assert_eq!(guest_death(&out(Some(0), false, &[]), &opts), None);
    // A failing suite is a verdict, not a death: never retried.
    assert_eq!(guest_death(&out(Some(1), false, &[]), &opts), None);
    let panic = out(
        None,
        false,
        &["[  52.1] Kernel panic - not syncing: softlockup: hung tasks"],
    );
    assert_eq!(
        guest_death(&panic, &opts).as_deref(),
        Some("the guest kernel died: [  52.1] Kernel panic - not syncing: softlockup: hung tasks")
    );
    assert!(guest_death(&out(None, true, &[]), &opts)
        .unwrap()
        .starts_with("VM timed out after 900 s"));
    assert!(guest_death(&out(None, false, &["x"]), &opts)
        .unwrap()
        .contains("without the end marker"));
}

#[test]
fn payload_runs_each_binary_under_a_timeout() {
    let p = test_payload(&["vm_a", "vm_b"], &VmOpts::default(), &["seed".into()]);
    assert!(
        p.contains("timeout -s KILL 480 /opt/tests/vm_a --include-ignored --test-threads=1 seed\n")
    );
    assert!(p.contains("@@VM-BIN-END vm_b status=$st"));
    assert_eq!(p.matches("@@VM-BIN-BEGIN").count(), 2);
}

#[test]
fn results_parsing() {
    let lines: Vec<String> = [
        "@@VM-BIN-BEGIN vm_a",
        "running 3 tests",
        "test flags::set ... ok",
        "test flags::clear ... FAILED",
        "test other ... ignored, reason",
        "@@VM-BIN-END vm_a status=101",
        "@@VM-BIN-BEGIN vm_b",
        "test x ... ok",
        "@@VM-BIN-END vm_b status=0",
        "@@VM-BIN-BEGIN vm_c",
        "test noisy ... output of the test",
        "ok",
        "test result: ok. 11 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.67s",
        "@@VM-BIN-END vm_c status=0",
        "@@VM-BIN-BEGIN vm_d",
        "test split ... some output",
        "FAILED",
        "failures:",
        "",
        "---- split stdout ----",
        "    \"a trace line\"",
        "",
        "failures:",
        "    split",
        "",
        "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s",
        "@@VM-BIN-END vm_d status=101",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = parse_results(&lines);
    assert_eq!(r.len(), 4);
    assert_eq!(r[3].failures, vec!["split".to_owned()]);
    assert_eq!(
        (r[0].passed, r[0].failed, r[0].ignored, r[0].status),
        (1, 1, 1, Some(101))
    );
    assert_eq!(r[0].failures, vec!["flags::clear".to_owned()]);
    assert_eq!((r[1].passed, r[1].status), (1, Some(0)));
    assert_eq!((r[2].passed, r[2].failed, r[2].ignored), (11, 0, 2));
}

#[test]
fn not_applicable_is_counted_apart() {
    let lines: Vec<String> = [
        "@@VM-BIN-BEGIN vm_a",
        "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s",
        "@@VM-NA ublk_queue: CONFIG_BLK_DEV_UBLK is not set",
        "@@VM-BIN-END vm_a status=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = parse_results(&lines);
    assert_eq!(r[0].passed, 3);
    assert_eq!(
        r[0].not_applicable,
        vec!["ublk_queue: CONFIG_BLK_DEV_UBLK is not set".to_owned()]
    );
    let p = test_payload(&["vm_a"], &VmOpts::default(), &[]);
    assert!(p.contains("export RECLAIM_VM_NA_FILE=/tmp/vm-na-vm_a"));
    assert!(p.contains("@@VM-NA $l"));
}

#[test]
fn madison_parsing() {
    let out = "linux-image-cloud-amd64 | 5.10.262-1 | http://m/debian-security bullseye-security/main amd64 Packages\n\
               linux-image-cloud-amd64 | 5.10.223-1 | http://m/debian bullseye/main amd64 Packages\n\
               linux-image-cloud-amd64 | 5.10.223-1 | http://n/debian bullseye/main amd64 Packages\n";
    assert_eq!(
        parse_madison(out),
        vec!["5.10.262-1".to_owned(), "5.10.223-1".to_owned()]
    );
}

#[test]
fn kernel_series() {
    assert!(kver_in_series("6.1.0-56-cloud-amd64", "6.1"));
    assert!(!kver_in_series("6.12.118+deb13-cloud-amd64", "6.1"));
    assert!(kver_in_series("6.12.118+deb13-cloud-amd64", "6.12"));
    assert!(kver_in_series("5.10.0-35-cloud-amd64", "5.10"));
    assert_eq!(suite_of("5.10").unwrap(), "bullseye");
    assert_eq!(suite_of("6.12").unwrap(), "trixie");
    assert_eq!(suite_of(DEFAULT_KERNEL).unwrap(), "bookworm");
    assert!(suite_of("4.19").is_err());
}

#[test]
fn host_sources_parsing() {
    let deb822 =
        "Types: deb\n# comment\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
                  Components: main\n\nTypes: deb\nURIs: http://m.example/debian-security\n\
                  Suites: bookworm-security\n\nTypes: deb-src\nURIs: http://x/\nSuites: sid\n";
    assert_eq!(
        parse_deb822_sources(deb822),
        vec![
            (
                "http://m.example/debian".to_owned(),
                vec!["bookworm".to_owned(), "bookworm-updates".to_owned()]
            ),
            (
                "http://m.example/debian-security".to_owned(),
                vec!["bookworm-security".to_owned()]
            ),
        ]
    );
    let one = "# x\ndeb [signed-by=/k.gpg arch=amd64] http://m/debian bookworm main\ndeb-src http://m/debian bookworm main\n";
    assert_eq!(
        parse_one_line_sources(one),
        vec![("http://m/debian".to_owned(), vec!["bookworm".to_owned()])]
    );
}
